"""The message protocol between the ServerApp and the ClientApp: record names and keys.

Plain constants, importable by both sides without importing Flower's server.
"""

from __future__ import annotations

ARRAYS_KEY = "arrays"
"""ArrayRecord with the global model (to clients) or a client's update (to the server)."""
CONFIG_KEY = "config"
"""ConfigRecord with the round's settings (to clients)."""
METRICS_KEY = "metrics"
"""MetricRecord of a reply."""

NUM_EXAMPLES_KEY = "num-examples"
"""Reply metric: the examples a client trained (or evaluated) on."""
EVAL_PREFIX = "eval-"
"""Prefix of train-reply metrics about the *received* global model (piggybacked evaluation)."""
MAX_METRICS = frozenset({"dp-epsilon", "dp-delta"})
"""Reply metrics aggregated by their maximum (privacy spent), not by a weighted mean."""

SERVER_ROUND_KEY = "server-round"
"""Round config: the round number."""
TRAIN_MODE_KEY = "train-mode"
"""Round config: what a client replies with, ``TRAIN_WEIGHTS`` or ``TRAIN_GRADIENT``."""
TRAIN_WEIGHTS = "weights"
TRAIN_GRADIENT = "gradient"
PROXIMAL_MU_KEY = "proximal-mu"
"""Round config: FedProx's proximal coefficient."""
