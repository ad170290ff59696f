"""Kubernetes API shapes and their one-way conversion into `nftproxy.model`."""
