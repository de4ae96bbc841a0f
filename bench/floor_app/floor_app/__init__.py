"""Flower's round floor, measured with a ClientApp that does nothing (bench/deploy.py)."""
