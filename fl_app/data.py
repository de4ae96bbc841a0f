"""Data: embedded datasets, the server's held-out test set, client partitions, local files.

The flow: the server holds out a stratified test set that no client sees;
the rest (the pool) is split among clients by a flwr-datasets partitioner; each
client splits its partition into train and validation parts. Every step is
deterministic from the run's ``seed``. A SuperNode in a real deployment instead
trains on its own file (node-config ``data-path``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from privacy.files import atomic_write_bytes
from privacy.ledger import data_fingerprint

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


class DataError(ValueError):
    """Data cannot be loaded or partitioned as configured."""


@dataclass(frozen=True)
class Split:
    """Features ``x`` (float32, shaped like the model input) and labels ``y`` (int64)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ClientData:
    """A client's local data: what it trains on, what it validates on, and whose it is.

    ``fingerprint`` identifies the client's whole data, before the split: the key of
    its privacy ledger, so that no other split of the same data gets a new budget.
    """

    train: Split
    val: Split
    fingerprint: str


@dataclass(frozen=True)
class DatasetSpec:
    """An embedded dataset: its shape, its classes and how to load it."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    standardize: bool
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


# scikit-learn (with scipy and pandas) is imported where it is used: a deployed
# ClientApp that reads its own data file starts without it, once per message.


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0)[:, None, :, :], bunch.target


def _load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data, bunch.target


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", (1, 8, 8), 10, False, _load_digits),
    "breast-cancer": DatasetSpec("breast-cancer", (30,), 2, True, _load_breast_cancer),
}

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "pathological")


SPLIT_CACHE_VERSION = 1


def _split_cache_file(dataset: str, test_fraction: float, seed: int) -> Path:
    """Return where the split of an embedded dataset is cached for other processes.

    Every simulated ClientApp needs the server's pool to cut its partition; reading it
    from this file spares each process importing scikit-learn (about 1.5 s). The file
    lives in ``$FLWR_HOME/cache`` (``~/.flwr`` without ``FLWR_HOME``), which the
    ServerApp and ClientApps of a simulation share.
    """
    key = f"{SPLIT_CACHE_VERSION}:{dataset}:{test_fraction!r}:{seed}".encode()
    home = Path(os.environ.get("FLWR_HOME") or "~/.flwr").expanduser()
    return home / "cache" / f"split-{hashlib.sha256(key).hexdigest()[:24]}.npz"


def _read_cached_split(path: Path) -> tuple[Split, Split] | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = [archive[name] for name in ("pool_x", "pool_y", "test_x", "test_y")]
    except (OSError, ValueError, KeyError):
        return None
    return Split(arrays[0], arrays[1]), Split(arrays[2], arrays[3])


def _write_cached_split(path: Path, pool: Split, test: Split) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, pool_x=pool.x, pool_y=pool.y, test_x=test.x, test_y=test.y)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue(), mode=0o600)


@lru_cache(maxsize=8)
def server_split(dataset: str, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Split an embedded dataset into the client pool and the server's test set.

    The test set is stratified by label. Tabular features are standardized with the
    pool's statistics (a fixed, public preprocessing step of the demo dataset). The
    result is cached on disk for the other processes of a simulation
    (:func:`_split_cache_file`).

    Returns
    -------
    tuple[Split, Split]
        ``(pool, test)``.
    """
    cache = _split_cache_file(dataset, test_fraction, seed)
    cached = _read_cached_split(cache)
    if cached is not None:
        return cached
    from sklearn.model_selection import train_test_split

    spec = DATASETS[dataset]
    x, y = spec.load()
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if spec.standardize:
        mean, std = x_pool.mean(axis=0), x_pool.std(axis=0) + 1e-8
        x_pool, x_test = (x_pool - mean) / std, (x_test - mean) / std
    pool, test = _as_split(x_pool, y_pool), _as_split(x_test, y_test)
    _write_cached_split(cache, pool, test)
    return pool, test


def _as_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))


def _make_partitioner(
    name: str, num_partitions: int, seed: int, alpha: float, labels_per_client: int
) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    if name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            seed=seed,
        )
    if name == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=labels_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    raise DataError(f"unknown partitioner '{name}'; valid: {', '.join(PARTITIONERS)}")


@lru_cache(maxsize=8)
def partition_indices(
    labels: tuple[int, ...],
    partitioner: str,
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    labels_per_client: int = 2,
) -> tuple[np.ndarray, ...]:
    """Assign sample indices to partitions as flwr-datasets' partitioners do.

    The partitioner runs over an in-memory ``datasets.Dataset`` of the labels,
    shuffled with ``seed`` first so that IID partitions are random draws; IID
    partitions are computed in numpy with the same result (:func:`iid_indices`).

    Returns
    -------
    tuple[np.ndarray, ...]
        One array of indices into ``labels`` per partition; together they cover
        each sample at most once.
    """
    if num_partitions > len(labels):
        raise DataError(f"cannot split {len(labels)} samples among {num_partitions} clients")
    if partitioner == "iid":
        return iid_indices(len(labels), num_partitions, seed)
    from datasets import Dataset

    table = Dataset.from_dict({"label": list(labels), "index": list(range(len(labels)))}).shuffle(
        seed=seed
    )
    part = _make_partitioner(partitioner, num_partitions, seed, alpha, labels_per_client)
    part.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return tuple(
                np.sort(np.asarray(part.load_partition(pid)["index"], dtype=np.int64))
                for pid in range(num_partitions)
            )
    except ValueError as err:
        raise DataError(
            f"partitioner '{partitioner}' failed for {num_partitions} clients "
            f"(dirichlet-alpha={alpha}, labels-per-client={labels_per_client}): {err}"
        ) from err


def iid_indices(size: int, num_partitions: int, seed: int) -> tuple[np.ndarray, ...]:
    """Return flwr-datasets' IID partitions of ``size`` samples shuffled with ``seed``, in numpy.

    The same indices as ``IidPartitioner`` over a ``datasets.Dataset`` shuffled with
    ``seed`` (a seeded permutation cut into contiguous, near-equal shards; checked by
    a test), without importing ``datasets`` in every client process.
    """
    permutation = np.random.default_rng(seed).permutation(size)
    return tuple(np.sort(part) for part in np.array_split(permutation, num_partitions))


def split_train_val(data: Split, val_fraction: float, seed: int) -> ClientData:
    """Split a client's data into train and validation parts (seeded shuffle)."""
    n = len(data)
    if n < 2:
        raise DataError(f"a client needs at least 2 samples, this one has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return ClientData(
        train=Split(data.x[train], data.y[train]),
        val=Split(data.x[val], data.y[val]),
        fingerprint=data_fingerprint([data.x, data.y]),
    )


@lru_cache(maxsize=32)
def embedded_client_data(
    dataset: str,
    test_fraction: float,
    val_fraction: float,
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    seed: int,
    alpha: float,
    labels_per_client: int,
) -> ClientData:
    """Return one simulated client's train/validation data from an embedded dataset."""
    pool, _ = server_split(dataset, test_fraction, seed)
    indices = partition_indices(
        tuple(pool.y.tolist()), partitioner, num_partitions, seed, alpha, labels_per_client
    )[partition_id]
    mine = Split(pool.x[indices], pool.y[indices])
    return split_train_val(mine, val_fraction, seed + partition_id)


def load_local_file(path: Path, spec: DatasetSpec, label_column: str = "label") -> Split:
    """Load a silo's own data file, checked against the task's dataset schema.

    Parameters
    ----------
    path : Path
        ``.npz`` with arrays ``x`` and ``y``, or ``.csv`` with a header row, one
        label column and numeric feature columns. Features must already be
        preprocessed the way the embedded dataset is (docs/configuration.md).
    spec : DatasetSpec
        The dataset the run trains on; the file must have its feature count.
    label_column : str
        Name of the CSV label column.

    Raises
    ------
    DataError
        Naming the file and what is wrong with it.
    """
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(
                    f"{path}: an .npz data file needs arrays 'x' and 'y', "
                    f"found {sorted(archive.files)}"
                )
            x, y = archive["x"], archive["y"]
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise DataError(f"{path}: unsupported data file type '{suffix}'; use .npz or .csv")
    return _check_local_data(path, x, y, spec)


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or label_column not in header:
            raise DataError(f"{path}: no label column '{label_column}' in the header")
        label_at = header.index(label_column)
        try:
            rows = [[float(v) for v in row] for row in reader if row]
        except ValueError as err:
            raise DataError(f"{path}: non-numeric value in CSV: {err}") from err
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return np.delete(table, label_at, axis=1), table[:, label_at]


def _check_local_data(path: Path, x: np.ndarray, y: np.ndarray, spec: DatasetSpec) -> Split:
    n_features = int(np.prod(spec.input_shape))
    if x.ndim < 1 or len(x) != len(y) or x.size != len(x) * n_features:
        raise DataError(
            f"{path}: x has shape {x.shape} and y {y.shape}; dataset '{spec.name}' needs "
            f"{n_features} features per sample and one label per sample"
        )
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: x contains NaN or infinite values")
    labels = np.asarray(y)
    if (
        not np.all(labels == np.round(labels))
        or labels.min() < 0
        or labels.max() >= spec.num_classes
    ):
        raise DataError(
            f"{path}: labels must be integers in [0, {spec.num_classes}) for dataset "
            f"'{spec.name}', found values from {labels.min()} to {labels.max()}"
        )
    return _as_split(x.reshape(len(x), *spec.input_shape), labels.astype(np.int64))
