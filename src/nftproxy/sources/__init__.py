"""Where Services and EndpointSlices come from: manifest files today, the API server later."""

__all__: list[str] = []
