"""Differential privacy in the app: DP-SGD on the client, client-level DP (central, distributed)."""
