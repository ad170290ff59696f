"""Kubernetes API shapes and their one-way conversion into `nftproxy.model`."""

__all__: list[str] = []
