"""Homomorphic encryption in the app: a ClientApp mod and a server-side strategy wrapper."""
