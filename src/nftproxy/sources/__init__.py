"""Cluster state from files: manifests read once (`manifests`, for every command) or a
directory watched (`watching`, for the daemon), which feeds the same Sink as the API's
reflectors."""

__all__: list[str] = []
