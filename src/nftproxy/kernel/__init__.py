"""The one edge to nftables: see backend.Backend."""
