"""Flower app: ServerApp, ClientApp, data, model, run config and results."""
