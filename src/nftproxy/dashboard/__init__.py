"""The app dashboard: users deploy and manage Helm charts on the cluster from a browser,
each with their own Kubernetes rights (see README, "App dashboard")."""

__all__: list[str] = []
