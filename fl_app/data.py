"""Data: embedded datasets, synthetic devices, users' own files, and the task's shape.

Four sources (run-config ``dataset``):

- ``digits``, ``breast-cancer`` (embedded): the server holds out a stratified test
  set that no client sees; the rest (the pool) is split among clients by a
  flwr-datasets partitioner.
- ``synthetic``: Synthetic(α, β) of the FedProx paper (:mod:`fl_app.synthetic`);
  simulated client ``i`` is device ``i``, generated from the seed; any number of
  clients.
- ``files``: every node reads its own ``.npz`` or ``.csv`` file; the task's shape
  comes from the run config or the server's test file (:class:`TaskShape`).

Each client splits its data into train and validation parts (seeded). Every step
is deterministic from the run's ``seed``. A SuperNode given node-config
``data-path`` trains on that file whatever the dataset. Loading never unpickles.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
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
"""The embedded datasets: a pool split among simulated clients and a server test set."""

SYNTHETIC = "synthetic"
FILES = "files"
DATASET_NAMES: tuple[str, ...] = (*DATASETS, SYNTHETIC, FILES)


@dataclass(frozen=True)
class TaskShape:
    """The shape of one sample and the number of classes: what the global model is built for.

    The server resolves it once (:func:`task_shape`) and sends it with every train and
    evaluate message (:meth:`to_config`), so a client checks its own file against the
    model it receives rather than against code.
    """

    input_shape: tuple[int, ...]
    num_classes: int

    INPUT_SHAPE_KEY = "task-input-shape"
    NUM_CLASSES_KEY = "task-num-classes"

    @property
    def num_features(self) -> int:
        """Return the number of values in one sample."""
        return int(np.prod(self.input_shape))

    @property
    def is_image(self) -> bool:
        """Tell whether samples are ``(channels, height, width)`` images."""
        return len(self.input_shape) == 3

    def describe(self) -> str:
        """Return e.g. ``'input shape 1,28,28 and 10 classes'``."""
        return f"input shape {format_shape(self.input_shape)} and {self.num_classes} classes"

    def to_config(self) -> dict[str, str | int]:
        """Return the message config entries that carry the shape."""
        return {
            self.INPUT_SHAPE_KEY: format_shape(self.input_shape),
            self.NUM_CLASSES_KEY: self.num_classes,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> TaskShape:
        """Read the shape from a message config written by :meth:`to_config`."""
        shape, classes = config.get(cls.INPUT_SHAPE_KEY), config.get(cls.NUM_CLASSES_KEY)
        if not isinstance(shape, str) or not isinstance(classes, int):
            raise DataError(
                f"the server's message carries no task shape ('{cls.INPUT_SHAPE_KEY}', "
                f"'{cls.NUM_CLASSES_KEY}'); is it running another version of the app?"
            )
        return cls(parse_shape(shape), classes)


def format_shape(shape: tuple[int, ...]) -> str:
    """Return a shape as run-config text, e.g. ``'1,28,28'``."""
    return ",".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse run-config ``input-shape`` text: ``'17'``, ``'28,28'`` or ``'1,28,28'``.

    A 2-D shape ``H,W`` means a single-channel image ``1,H,W``.

    Raises
    ------
    DataError
        If the text is not 1 to 3 positive integers separated by commas.
    """
    try:
        dims = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise DataError(
            f"input shape '{text}' is invalid: must be 1 to 3 positive integers separated by "
            "commas: features ('17'), an image ('28,28') or channels,height,width ('1,28,28')"
        )
    return (1, *dims) if len(dims) == 2 else dims


def embedded_shape(dataset: str) -> TaskShape:
    """Return the shape of an embedded or synthetic dataset."""
    if dataset == SYNTHETIC:
        from fl_app.synthetic import NUM_CLASSES, NUM_FEATURES

        return TaskShape((NUM_FEATURES,), NUM_CLASSES)
    spec = DATASETS[dataset]
    return TaskShape(spec.input_shape, spec.num_classes)


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


def synthetic_client_data(
    seed: int, device: int, alpha: float, beta: float, val_fraction: float
) -> ClientData:
    """Return device ``device`` of Synthetic(α, β), split into train and validation parts."""
    from fl_app.synthetic import device_data

    x, y = device_data(seed, device, alpha, beta)
    return split_train_val(Split(x, y), val_fraction, seed + device)


def partition_file(source: str, partition_id: int, num_partitions: int) -> Path:
    """Return the file simulated partition ``partition_id`` reads (run-config ``partition-files``).

    Parameters
    ----------
    source : str
        A folder (its ``.npz`` and ``.csv`` files in name order) or a comma-separated
        list of files.
    partition_id, num_partitions : int
        The simulated node's partition and the federation's size; there must be
        exactly one file per partition.

    Raises
    ------
    DataError
        If the folder or a file does not exist, or the count differs from
        ``num_partitions``.
    """
    folder = Path(source).expanduser()
    if "," not in source and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        where = f"folder '{folder}' has"
    else:
        files = [Path(part.strip()).expanduser() for part in source.split(",") if part.strip()]
        where = "the list has"
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"partition-files: no such file(s): {', '.join(missing)}")
    if len(files) != num_partitions:
        raise DataError(
            f"partition-files: {where} {len(files)} data file(s) ({', '.join(DATA_SUFFIXES)}); "
            f"the federation has {num_partitions} partitions and needs one file each"
        )
    return files[partition_id]


DATA_SUFFIXES: tuple[str, ...] = (".npz", ".csv")
IMAGE_PIXEL_MAX = 255
"""Integer image pixels are divided by this (8-bit images)."""


def load_data_file(path: Path, shape: TaskShape, label_column: str = "label") -> Split:
    """Load a silo's data file, checked against the task's shape.

    Parameters
    ----------
    path : Path
        ``.npz`` with arrays ``x`` and ``y`` (loaded without pickle), or ``.csv``
        with a header row, one label column and numeric feature columns.
        ``x`` may be ``(N, features)`` or, for images, ``(N, H, W)``,
        ``(N, C, H, W)`` or flattened ``(N, C*H*W)``. Pixels (``uint8`` data, or
        integer data of an image shape: 0 to 255) are scaled to [0, 1]; every other
        value is used as is: tabular features must
        come preprocessed with constants agreed between the silos
        (docs/configuration.md#your-own-data).
    shape : TaskShape
        The global model's input shape and class count.
    label_column : str
        Name of the CSV label column.

    Raises
    ------
    DataError
        Naming the file, what it holds and what was expected.
    """
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise DataError(
            f"{path}: unsupported data file type '{suffix}'; use {' or '.join(DATA_SUFFIXES)}"
        )
    return check_data(str(path), x, y, shape)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files or "y" not in archive.files:
                raise DataError(
                    f"{path}: an .npz data file needs arrays 'x' and 'y', "
                    f"found {sorted(archive.files)}"
                )
            return archive["x"], archive["y"]
    except DataError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"{path}: holds pickled Python objects, which are never loaded (they can run "
                "code); save plain numeric arrays: np.savez(path, x=x, y=y)"
            ) from err
        raise DataError(f"{path}: not a readable .npz file: {err}") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file (truncated or corrupt): {err}") from err


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or label_column not in header:
            found = ", ".join(header or []) or "no header"
            raise DataError(
                f"{path}: no label column '{label_column}' in the header (found: {found}); "
                "name it with node-config 'label-column'"
            )
        label_at = header.index(label_column)
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {line} has {len(row)} values, the header {len(header)}"
                )
            try:
                rows.append([float(v) for v in row])
            except ValueError as err:
                raise DataError(f"{path}: line {line}: non-numeric value: {err}") from err
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return np.delete(table, label_at, axis=1), table[:, label_at]


def check_data(name: str, x: np.ndarray, y: np.ndarray, shape: TaskShape) -> Split:
    """Check loaded arrays against the task's shape; return them as a model-ready Split.

    Raises
    ------
    DataError
        Naming ``name`` (the file), what it holds and what the task expects.
    """
    if x.dtype.kind not in "biuf" or np.asarray(y).dtype.kind not in "biuf":
        raise DataError(
            f"{name}: x ({x.dtype}) and y ({np.asarray(y).dtype}) must be numeric arrays"
        )
    if x.ndim < 2 or np.ndim(y) != 1 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"{name}: x has shape {x.shape} and y {np.shape(y)}; expected x of shape "
            f"(N, {format_shape(shape.input_shape)}) and y of shape (N,), N > 0"
        )
    per_sample = int(np.prod(x.shape[1:]))
    if per_sample != shape.num_features:
        raise DataError(
            f"{name}: samples have shape {format_shape(x.shape[1:])} ({per_sample} values); "
            f"the task expects {format_shape(shape.input_shape)} ({shape.num_features} values)"
        )
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise DataError(f"{name}: {bad} of {len(x)} samples contain NaN or infinite values")
    labels = np.asarray(y)
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise DataError(f"{name}: labels contain NaN or infinite values")
    if (
        not np.all(labels == np.round(labels))
        or labels.min() < 0
        or labels.max() >= shape.num_classes
    ):
        raise DataError(
            f"{name}: labels range from {labels.min()} to {labels.max()}; the task expects "
            f"integers in [0, {shape.num_classes})"
        )
    features = x.reshape(len(x), *shape.input_shape)
    if x.dtype == np.uint8 or (shape.is_image and x.dtype.kind in "biu"):
        if x.min() < 0 or x.max() > IMAGE_PIXEL_MAX:
            raise DataError(
                f"{name}: integer pixels range from {x.min()} to {x.max()}; expected 0 to "
                f"{IMAGE_PIXEL_MAX} (8-bit), or floats already scaled"
            )
        features = features / IMAGE_PIXEL_MAX
    return _as_split(features, labels.astype(np.int64))


def task_shape(
    dataset: str, input_shape: str, num_classes: int, server_test: Split | None
) -> TaskShape:
    """Resolve the task's shape: the dataset's own, the run config's, or the server test file's.

    For ``dataset = "files"`` the run config's ``input-shape`` and ``num-classes``
    win; a missing one is taken from the server's test file (its samples' shape; its
    largest label + 1).

    Raises
    ------
    DataError
        If neither gives the shape.
    """
    if dataset != FILES:
        return embedded_shape(dataset)
    if input_shape:
        shape = parse_shape(input_shape)
    elif server_test is not None:
        shape = tuple(server_test.x.shape[1:])
    else:
        raise DataError(
            "dataset 'files' needs the model's input: set run-config 'input-shape' "
            "(e.g. '1,28,28' or '17') or 'server-test-path'"
        )
    if num_classes:
        classes = num_classes
    elif server_test is not None:
        classes = int(server_test.y.max()) + 1
    else:
        raise DataError(
            "dataset 'files' needs the class count: set run-config 'num-classes' "
            "or 'server-test-path'"
        )
    return TaskShape(shape, classes)


def read_server_test_file(path: Path, input_shape: str, num_classes: int) -> Split:
    """Load the server's test file (run-config ``server-test-path``).

    Its shape is checked against ``input-shape`` / ``num-classes`` where they are set;
    otherwise it defines them (:func:`task_shape`).
    """
    if not path.is_file():
        raise DataError(f"run-config 'server-test-path' = '{path}' is not a readable file")
    if path.suffix.lower() == ".csv":
        x, y = _read_csv(path, "label")
    else:
        x, y = _read_npz(path)
    if x.ndim == 3:
        x = x[:, None]
    shape = TaskShape(
        parse_shape(input_shape) if input_shape else tuple(x.shape[1:]),
        num_classes or int(np.max(y)) + 1,
    )
    return check_data(str(path), x, y, shape)
