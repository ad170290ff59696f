"""The Kubernetes API: an HTTP client, wire objects converted once into `nftproxy.model`, and
the reflectors that list and watch them."""

__all__: list[str] = []
