"""The one edge to nftables: see backend.Backend."""

__all__: list[str] = []
