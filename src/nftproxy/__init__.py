"""nftproxy: a Kubernetes service proxy that programs nftables with shared maps."""

__all__ = ["__version__"]

__version__ = "0.1.0"
