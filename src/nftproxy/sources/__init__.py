"""Where Services and EndpointSlices come from: manifest files today, the API server later."""
