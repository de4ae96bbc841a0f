"""Checkpoints: everything needed to resume a run exactly, in one atomically written file.

A checkpoint is a single ``.npz`` archive (no pickle, so loading one never runs code):
the global arrays, the strategy's state (server-optimiser moments, the client-level
DP accounting), the last completed round, the results history so far, the run config
and the run's DP plan ID (which names the clients' noise calibration; budgets are the
clients' own). It holds nothing secret and may be published with the results: the
run's secret stays in the run directory's ``private/`` folder. Sampling and plain
local training are seeded per round, so restoring these is enough for a resumed run
to end with the same weights as an uninterrupted one (privacy noise is fresh).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privacy.files import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 2
META_KEY = "meta"
ARRAY_TAG = "__array__"

# Keys a resumed run may change; every other run-config key must equal the checkpoint's.
RESUME_MUTABLE_KEYS = frozenset(
    {
        "output-dir",
        "resume-from",
        "num-server-rounds",
        "round-timeout",
        "target-accuracy",
        "max-round-retries",
    }
)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match the run config."""


@dataclass
class Checkpoint:
    """The state of a run after ``server_round`` completed rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, Any]
    results: dict[str, Any]
    config: dict[str, Any]
    plan_id: str


def _flatten(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace numpy arrays in a nested structure by tags; collect them in ``arrays``."""
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {ARRAY_TAG: path}
    if isinstance(value, dict):
        return {str(k): _flatten(v, f"{path}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unflatten(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {ARRAY_TAG}:
            return arrays[value[ARRAY_TAG]]
        return {k: _unflatten(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, arrays) for v in value]
    return value


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint.npz`` in ``directory`` atomically; return its path."""
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "format_version": FORMAT_VERSION,
        "server_round": checkpoint.server_round,
        "array_keys": list(checkpoint.arrays),
        "strategy_state": _flatten(checkpoint.strategy_state, "strategy", arrays),
        "results": checkpoint.results,
        "config": checkpoint.config,
        "plan_id": checkpoint.plan_id,
    }
    for i, array in enumerate(checkpoint.arrays.values()):
        arrays[f"global/{i}"] = array
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    path = directory / CHECKPOINT_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(location: Path) -> Checkpoint:
    """Load a checkpoint from a results directory or a ``checkpoint.npz`` path.

    Raises
    ------
    CheckpointError
        Naming the path and what is wrong with it.
    """
    path = location / CHECKPOINT_FILE if location.is_dir() else location
    if not path.is_file():
        raise CheckpointError(
            f"resume-from '{location}': no {CHECKPOINT_FILE} there (a run writes one "
            "after every completed round)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"resume-from '{path}': unreadable checkpoint ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"resume-from '{path}': checkpoint format {meta.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    global_arrays = {key: arrays[f"global/{i}"] for i, key in enumerate(meta["array_keys"])}
    return Checkpoint(
        server_round=int(meta["server_round"]),
        arrays=global_arrays,
        strategy_state=_unflatten(meta["strategy_state"], arrays),
        results=meta["results"],
        config=meta["config"],
        plan_id=str(meta["plan_id"]),
    )


def check_resumable(checkpoint: Checkpoint, config: dict[str, Any]) -> None:
    """Raise CheckpointError if the run config differs from the checkpoint's.

    Only the keys in ``RESUME_MUTABLE_KEYS`` may change on resume; anything else would
    make the resumed run a different experiment.
    """
    differences = [
        f"'{key}': checkpoint {checkpoint.config.get(key)!r}, now {config.get(key)!r}"
        for key in sorted(set(checkpoint.config) | set(config))
        if key not in RESUME_MUTABLE_KEYS and checkpoint.config.get(key) != config.get(key)
    ]
    if differences:
        raise CheckpointError(
            "cannot resume: the run config differs from the checkpoint's in "
            + "; ".join(differences)
        )
    if config["num-server-rounds"] <= checkpoint.server_round:
        raise CheckpointError(
            f"cannot resume: the checkpoint already completed {checkpoint.server_round} "
            f"rounds and num-server-rounds is {config['num-server-rounds']}"
        )
