"""Fault injection for tests and benchmarks: reply hooks for the in-process grid.

Never reachable from a run config: a hook changes or drops a ClientApp's reply
inside the in-process grid, as a lost or malicious client would.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, Message, MessageType

from testing.inprocess_grid import ReplyHook


def dropout_hook(rate: float, seed: int) -> ReplyHook:
    """Each client independently fails to answer with probability ``rate`` per round.

    A retried round (too few updates the first time) draws again: a retry is a new
    chance for every client to answer.
    """
    asked: dict[tuple[int, int], int] = {}

    def hook(partition_id: int, message: Message, reply: Message) -> Message | None:
        if message.metadata.message_type != MessageType.TRAIN:
            return reply
        server_round = int(message.content["config"]["server-round"])
        attempt = asked.get((server_round, partition_id), 0)
        asked[(server_round, partition_id)] = attempt + 1
        key = [seed, server_round, partition_id] + ([attempt] if attempt else [])
        draw = np.random.default_rng(key).random()
        return None if draw < rate else reply

    return hook


def sign_flip_hook(attackers: int, scale: float) -> ReplyHook:
    """Make the first ``attackers`` partitions send their update sign-flipped and scaled.

    A model reply ``w`` becomes ``g - scale * (w - g)`` (``g``: the global model it
    received); a gradient reply (round config ``train-mode = "gradient"``, FedSGD)
    becomes ``-scale * gradient``.
    """

    def hook(partition_id: int, message: Message, reply: Message) -> Message | None:
        if (
            partition_id >= attackers
            or message.metadata.message_type != MessageType.TRAIN
            or reply.has_error()
        ):
            return reply
        gradient = message.content["config"].get("train-mode", "weights") == "gradient"
        sent, received = message.content["arrays"], reply.content["arrays"]
        for key in list(received.keys()):
            g, w = sent[key].numpy(), received[key].numpy()
            flipped = -scale * w if gradient else g - scale * (w - g)
            received[key] = Array(flipped.astype(w.dtype))
        return reply

    return hook
