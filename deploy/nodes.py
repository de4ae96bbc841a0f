"""What each SuperNode is started with: its key pair, its data file, its node config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.files import DeployError
from deploy.node_data import write_demo_partitions
from deploy.node_keys import check_node_name, ensure_node_key, node_directory
from fl_app.config import ConfigError, RunConfig, parse_node_config


@dataclass(frozen=True)
class SuperNodeSpec:
    """One SuperNode: its name, its authentication key pair, its node config.

    ``node_config`` holds what the ClientApp reads from ``context.node_config``:
    ``partition-id``, ``num-partitions``, ``data-path``, ``he-secret-context``,
    ``state-dir``, ...
    """

    name: str
    auth_private_key: Path
    auth_public_key: Path
    node_config: dict[str, Any] = field(default_factory=dict)


def default_names(count: int) -> list[str]:
    """Return the names ``node-0`` ... ``node-{count-1}``."""
    if count < 1:
        raise DeployError(f"a deployment needs at least 1 SuperNode, got {count}")
    return [f"node-{i}" for i in range(count)]


def _expand(value: Any, name: str) -> Any:
    """Replace ``{node}`` in a string value by the node's name."""
    return value.replace("{node}", name) if isinstance(value, str) else value


def prepare_supernodes(
    directory: Path,
    names: list[str],
    config: RunConfig,
    data_paths: dict[str, Path] | None = None,
    extra_node_config: dict[str, Any] | None = None,
) -> list[SuperNodeSpec]:
    """Create (or reuse) every node's key pair and data file; return the SuperNode specs.

    Parameters
    ----------
    directory : Path
        The deployment directory.
    names : list[str]
        The nodes; node ``names[i]`` gets ``partition-id = i``.
    config : RunConfig
        The run config the demo data files are cut for.
    data_paths : dict[str, Path], optional
        Nodes that train on their own file instead of a demo partition.
    extra_node_config : dict[str, Any], optional
        More node-config keys for every node (``he-secret-context``,
        ``state-dir``, ...); ``{node}`` in a string value becomes the node's
        name, so ``dp-state-dir = "/ledgers/{node}"`` gives each node its own.

    Raises
    ------
    DeployError
        For a duplicate or malformed name, a data path naming an unknown node or a
        missing file, or an existing key or data file that does not fit.
    """
    for name in names:
        check_node_name(name)
    if len(set(names)) != len(names):
        raise DeployError(f"node names must be distinct, got {names}")
    own = {name: Path(path).expanduser().resolve() for name, path in (data_paths or {}).items()}
    unknown = sorted(set(own) - set(names))
    if unknown:
        raise DeployError(f"data path given for unknown node(s) {unknown}; nodes are {names}")
    for name, path in own.items():
        if not path.is_file():
            raise DeployError(f"data file of node {name} does not exist: {path}")
    if own and len(own) != len(names):
        raise DeployError(
            "give every node its own data file or none (then each gets its demo partition); "
            f"files were given for {sorted(own)} of {names}"
        )
    data = own or dict(zip(names, write_demo_partitions(directory, names, config), strict=True))
    configs: dict[str, dict[str, Any]] = {}
    specs = []
    for partition_id, name in enumerate(names):
        node_config: dict[str, Any] = {
            "partition-id": partition_id,
            "num-partitions": len(names),
            "data-path": str(data[name].resolve()),
            "state-dir": str(node_directory(directory, name).resolve() / "state"),
        }
        for key_name, value in (extra_node_config or {}).items():
            if key_name in ("partition-id", "num-partitions", "data-path"):
                raise DeployError(f"node-config key '{key_name}' is set by the deployment itself")
            node_config[key_name] = _expand(value, name)
        try:
            parse_node_config(node_config)
        except ConfigError as err:
            raise DeployError(f"node {name}: {err}") from err
        configs[name] = node_config
    for name, node_config in configs.items():
        key = ensure_node_key(directory, name)
        specs.append(SuperNodeSpec(name, key.private_key, key.public_key, node_config))
    return specs
