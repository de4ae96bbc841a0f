"""Each SuperNode's data file: for a demo, its partition of the embedded dataset.

A real silo points its SuperNode at its own file (node-config ``data-path``; see
docs/configuration.md for the format). For a demo, :func:`write_demo_partitions` writes node
``i``'s share of the embedded dataset to ``nodes/<name>/data.npz`` (arrays ``x``,
``y``): exactly the samples simulated client ``i`` gets from the same run config,
before its train/validation split. A SuperNode started with ``partition-id = i``
then splits it as the simulation does, so a deployed run and a simulated run of
the same config train on the same data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from deploy.files import DeployError, write_new_file
from deploy.node_keys import node_directory
from fl_app.config import RunConfig
from fl_app.data import (
    FILES,
    SYNTHETIC,
    DataError,
    Split,
    load_data_file,
    partition_indices,
    server_split,
)

DATA_FILE = "data.npz"


def demo_partition(config: RunConfig, num_partitions: int, partition_id: int) -> Split:
    """Return partition ``partition_id`` of the embedded dataset, as the simulation cuts it.

    For ``dataset = "synthetic"`` it is device ``partition_id``.

    Raises
    ------
    DeployError
        For ``dataset = "files"``: there is no demo data, every node needs its file.
    """
    if config.dataset == FILES:
        raise DeployError(
            "dataset 'files' has no demo data: give every node its file with --data NODE=PATH"
        )
    if config.dataset == SYNTHETIC:
        from fl_app.synthetic import device_data

        x, y = device_data(config.seed, partition_id, config.synthetic_alpha, config.synthetic_beta)
        return Split(x, y)
    pool, _ = server_split(config.dataset, config.test_fraction, config.seed)
    indices = partition_indices(
        tuple(pool.y.tolist()),
        config.partitioner,
        num_partitions,
        config.seed,
        config.dirichlet_alpha,
        config.labels_per_client,
    )[partition_id]
    return Split(pool.x[indices], pool.y[indices])


def _npz_bytes(split: Split) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=split.x, y=split.y)
    return buffer.getvalue()


def _same_data(path: Path, split: Split) -> bool:
    with np.load(path, allow_pickle=False) as archive:
        return (
            set(archive.files) == {"x", "y"}
            and np.array_equal(archive["x"], split.x)
            and np.array_equal(archive["y"], split.y)
        )


def write_demo_partitions(directory: Path, names: list[str], config: RunConfig) -> list[Path]:
    """Write one data file per node: node ``names[i]`` gets partition ``i``.

    Parameters
    ----------
    directory : Path
        The deployment directory; files go to ``nodes/<name>/data.npz``.
    names : list[str]
        The nodes, in partition order.
    config : RunConfig
        The run config whose ``dataset``, ``test-fraction``, ``partitioner``,
        ``seed``, ``dirichlet-alpha`` and ``labels-per-client`` cut the data.

    Returns
    -------
    list[Path]
        The data file of each node.

    Raises
    ------
    DeployError
        If a node's data file exists with other data (it is never overwritten).
    """
    paths = []
    for partition_id, name in enumerate(names):
        split = demo_partition(config, len(names), partition_id)
        path = node_directory(directory, name) / DATA_FILE
        if path.exists():
            if not _same_data(path, split):
                raise DeployError(
                    f"{path} exists and holds other data than partition {partition_id} of "
                    f"{len(names)} of '{config.dataset}' (seed {config.seed}); it is never "
                    "overwritten: move it away or use another deployment directory"
                )
        else:
            write_new_file(path, _npz_bytes(split))
        paths.append(path)
    return paths


def check_node_data(config: RunConfig, data_paths: dict[str, Path], label_column: str) -> None:
    """Load every node's file against the task's shape, before any key or certificate exists.

    The shape is the one the ServerApp resolves: the dataset's own, or for
    ``dataset = "files"`` the run config's ``input-shape``/``num-classes`` or the
    server's test file.

    Raises
    ------
    DeployError
        Listing every node whose file a node would refuse, with the file and the problem.
    """
    from fl_app.server_app import resolve_task

    if config.dataset == FILES and not data_paths:
        raise DeployError(
            "dataset 'files' has no demo data: give every node its file with --data NODE=PATH"
        )
    try:
        shape, _ = resolve_task(config)
    except DataError as err:
        raise DeployError(str(err)) from err
    problems = []
    for name, path in sorted(data_paths.items()):
        try:
            load_data_file(path.expanduser(), shape, label_column)
        except (DataError, OSError) as err:
            problems.append(f"node {name}: {err}")
    if problems:
        raise DeployError(
            f"{len(problems)} data file(s) do not fit {shape.describe()}: " + "; ".join(problems)
        )
