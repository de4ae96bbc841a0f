"""Differential privacy in the app: local DP-SGD on the client, client-level DP on the server."""
