"""nftproxy: a Kubernetes service proxy that programs nftables with shared maps."""

__version__ = "0.1.0"
