"""Run and node configuration: one place that parses and validates them.

Every run-config key is declared once, as a field of :class:`RunConfig`, with its
default, its type and the rule it must satisfy. ``pyproject.toml`` lists the same
keys in kebab-case under ``[tool.flwr.app.config]`` (a test keeps the two equal).
:func:`parse_run_config` rejects unknown keys and bad values in one go, before any
training, with a message that names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from fl_app.data import (
    DATASET_NAMES,
    DATASETS,
    FILES,
    PARTITIONERS,
    SYNTHETIC,
    DataError,
    parse_shape,
)
from fl_app.model import MODELS, model_kinds
from privacy import ACCOUNTANTS
from strategies import LINEAR_STRATEGIES, STRATEGIES
from strategies.linear import QUALITY_METRICS, WEIGHT_BY
from strategies.protocol import NUM_EXAMPLES_KEY

if TYPE_CHECKING:
    from flwr.app import Context

DP_MODES: tuple[str, ...] = ("none", "local", "central", "distributed")
CLIENT_LEVEL_DP = frozenset({"central", "distributed"})
"""DP modes that protect a client's whole data: noise on the sum of clipped updates."""


class ConfigError(ValueError):
    """A run-config or node-config value is unknown or invalid."""


Check = Callable[[Any], bool]


def _option(default: Any, check: Check | None = None, allowed: str = "") -> Any:
    """Declare a config field with its validation rule and a description of it."""
    return field(default=default, metadata={"check": check, "allowed": allowed})


def _at_least(low: float) -> Check:
    return lambda v: v >= low


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _non_negative(v: float) -> bool:
    return v >= 0 and math.isfinite(v)


def _positive_or_inf(v: float) -> bool:
    return v > 0


def _fraction(v: float) -> bool:
    return 0.0 < v <= 1.0


def _open_fraction(v: float) -> bool:
    return 0.0 < v < 1.0


def _one_of(choices: Mapping[str, Any] | tuple[str, ...]) -> tuple[Check, str]:
    names = tuple(choices)
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated run configuration (``[tool.flwr.app.config]``)."""

    # --- run ---
    num_server_rounds: int = _option(20, _at_least(1), "an integer >= 1")
    seed: int = _option(42, _at_least(0), "an integer >= 0")
    target_accuracy: float = _option(
        0.0, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1] (0 disables early stopping)"
    )
    output_dir: str = _option("", None, "a path ('' means outputs/<UTC timestamp>)")
    round_timeout: float = _option(300.0, _positive, "a number of seconds > 0")
    max_round_retries: int = _option(2, _at_least(0), "an integer >= 0")
    max_update_norm: float = _option(
        0.0, lambda v: v >= 0 and math.isfinite(v), "a number >= 0 (0 disables the check)"
    )
    resume_from: str = _option("", None, "a results directory or checkpoint.npz ('' = new run)")
    # --- data ---
    dataset: str = _option("digits", *_one_of(DATASET_NAMES))
    input_shape: str = _option(
        "", None, "'' (the dataset's own) or a shape such as '17', '28,28' or '1,28,28'"
    )
    num_classes: int = _option(0, _at_least(0), "an integer >= 0 (0 = the dataset's own)")
    server_test_path: str = _option(
        "", None, "a path to the server's .npz/.csv test file ('' = the embedded test split)"
    )
    partition_files: str = _option(
        "", None, "a folder or comma-separated files: simulated partition i reads file i"
    )
    synthetic_alpha: float = _option(0.0, _non_negative, "a number >= 0 (model skew α)")
    synthetic_beta: float = _option(0.0, _non_negative, "a number >= 0 (feature skew β)")
    partitioner: str = _option("iid", *_one_of(PARTITIONERS))
    dirichlet_alpha: float = _option(0.5, _positive, "a number > 0")
    labels_per_client: int = _option(2, _at_least(1), "an integer >= 1")
    test_fraction: float = _option(0.2, _open_fraction, "a number in (0, 1)")
    val_fraction: float = _option(0.1, _open_fraction, "a number in (0, 1)")
    # --- model and local training ---
    model: str = _option(
        "auto",
        lambda v: v == "auto" or v in MODELS,
        "one of " + ", ".join(repr(k) for k in model_kinds()) + " (fl_app/model.py's registry)",
    )
    local_epochs: int = _option(2, _at_least(1), "an integer >= 1")
    batch_size: int = _option(16, _at_least(1), "an integer >= 1")
    learning_rate: float = _option(0.05, _positive, "a number > 0")
    momentum: float = _option(0.9, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
    # --- aggregation ---
    strategy: str = _option("fedavg", *_one_of(STRATEGIES))
    fraction_train: float = _option(1.0, _fraction, "a number in (0, 1]")
    min_train_nodes: int = _option(
        0,
        _at_least(0),
        "an integer >= 0 (0 = the strategy's own: 2, Krum num-malicious + 3)",
    )
    # --- strategy parameters (each strategy reads its own; docs/strategies.md) ---
    weight_by: str = _option("val-accuracy", *_one_of(WEIGHT_BY))
    hybrid_mix: float = _option(0.5, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
    server_learning_rate: float = _option(
        0.0,
        lambda v: v >= 0 and math.isfinite(v),
        "a number >= 0 (0 = the strategy's default)",
    )
    server_momentum: float = _option(0.5, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
    beta_1: float = _option(0.9, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
    beta_2: float = _option(0.99, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
    tau: float = _option(1e-3, _positive, "a number > 0")
    proximal_mu: float = _option(
        0.01, lambda v: v >= 0 and math.isfinite(v), "a number >= 0 (0 = FedAvg)"
    )
    trim_beta: float = _option(0.2, lambda v: 0.0 <= v < 0.5, "a number in [0, 0.5)")
    num_malicious: int = _option(0, _at_least(0), "an integer >= 0")
    num_krum_selected: int = _option(0, _at_least(0), "an integer >= 0 (0 = all but num-malicious)")
    # --- homomorphic encryption ---
    he: bool = _option(False, None, "true or false")
    he_public_context: str = _option(
        "", None, "a path to the public HE context ('' = $FLWR_HOME/he/public.ctx)"
    )
    # --- differential privacy (docs/differential-privacy.md) ---
    dp: str = _option("none", *_one_of(DP_MODES))
    dp_target_epsilon: float = _option(
        8.0, _non_negative, "a number >= 0 (0 = no ceiling; then give a noise multiplier)"
    )
    dp_delta: float = _option(
        0.0, lambda v: 0.0 <= v < 1.0, "a number in [0, 1) (0 = min(1e-5, 1/(10 n)))"
    )
    dp_noise_multiplier: float = _option(
        0.0, _non_negative, "a number >= 0 (0 = calibrate from dp-target-epsilon)"
    )
    dp_max_grad_norm: float = _option(1.0, _positive, "a number > 0")
    dp_accountant: str = _option("rdp", *_one_of(ACCOUNTANTS))
    dp_clipping_norm: float = _option(1.0, _positive, "a number > 0")
    dp_central_noise_multiplier: float = _option(
        0.0, _non_negative, "a number >= 0 (0 = calibrate from dp-target-epsilon)"
    )

    @property
    def prefers_mlp(self) -> bool:
        """Tell whether ``model = "auto"`` means the MLP even for images.

        DP-SGD's noise grows with the parameter count: on digits the MLP (4.8k
        parameters) reaches far higher accuracy at equal ε than the CNN (38k;
        ``bench/dp.py``). One full-batch gradient step per round (FedSGD) trains the MLP
        steadily, while the CNN oscillated for every learning rate tried (0.1 to 0.7).
        """
        return self.dp == "local" or STRATEGIES[self.strategy].sends_gradient

    def to_dict(self) -> dict[str, Any]:
        """Return the config with its kebab-case run-config keys."""
        return {name.replace("_", "-"): value for name, value in asdict(self).items()}


def config_key(field_name: str) -> str:
    """Return the kebab-case run-config key of a :class:`RunConfig` field."""
    return field_name.replace("_", "-")


RUN_CONFIG_KEYS: tuple[str, ...] = tuple(config_key(f.name) for f in fields(RunConfig))


def _coerce(what: str, key: str, value: Any, kind: type) -> Any:
    """Convert a TOML value to the field's type, or raise ConfigError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(
        f"{what} key '{key}' = {value!r} has type {type(value).__name__}; expected {kind.__name__}"
    )


def _unknown_key_error(what: str, unknown: list[str], known: tuple[str, ...]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        parts.append(f"unknown {what} key '{key}'{hint}")
    return "; ".join(parts) + ". Valid keys: " + ", ".join(known)


def _parse_fields(
    schema: type, what: str, raw: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Check ``raw`` against a dataclass declared with :func:`_option`.

    Returns
    -------
    tuple[dict[str, Any], list[str]]
        The typed values by field name (keys that are absent are left out), and
        every error: unknown keys, wrong types and values outside their rule.
    """
    known = tuple(config_key(f.name) for f in fields(schema))
    unknown = sorted(set(raw) - set(known))
    if unknown:
        return {}, [_unknown_key_error(what, unknown, known)]
    hints = get_type_hints(schema)
    errors: list[str] = []
    values: dict[str, Any] = {}
    for spec in fields(schema):
        key = config_key(spec.name)
        if key not in raw:
            continue
        try:
            value = _coerce(what, key, raw[key], hints[spec.name])
        except ConfigError as err:
            errors.append(str(err))
            continue
        check = spec.metadata["check"]
        if check is not None and not check(value):
            errors.append(
                f"{what} key '{key}' = {value!r} is invalid: must be {spec.metadata['allowed']}"
            )
        values[spec.name] = value
    return values, errors


def parse_run_config(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Parse and validate a Flower run config into a :class:`RunConfig`.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        ``context.run_config``: the defaults from ``pyproject.toml`` fused with the
        user's overrides. Keys that are missing take the defaults of RunConfig.
    overrides : Mapping[str, Any], optional
        The raw ``--run-config`` overrides (``grid.run.override_config``). Flower
        silently drops override keys that ``pyproject.toml`` does not declare; passing
        them here turns a mistyped key into an error instead of a silent default.

    Returns
    -------
    RunConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        Listing every unknown key and every invalid value, with what is allowed.
    """
    merged = {**run_config, **(overrides or {})}
    values, errors = _parse_fields(RunConfig, "run-config", merged)
    if not errors:
        config = RunConfig(**values)
        errors = _cross_field_errors(config)
        if not errors:
            return config
    raise ConfigError("invalid run config: " + "; ".join(errors))


def _cross_field_errors(config: RunConfig) -> list[str]:
    """Return the errors that involve more than one key."""
    errors = _data_errors(config)
    return errors + _strategy_errors(config) + _he_errors(config) + _dp_errors(config)


def _data_errors(config: RunConfig) -> list[str]:
    """Return the errors of the data keys taken together."""
    errors = []
    if config.dataset != FILES:
        for key, value in (
            ("input-shape", config.input_shape),
            ("num-classes", config.num_classes),
            ("partition-files", config.partition_files),
        ):
            if value:
                errors.append(
                    f"run-config key '{key}' = {value!r} is only for dataset '{FILES}'; "
                    f"dataset '{config.dataset}' has its own"
                )
    elif not config.server_test_path and not (config.input_shape and config.num_classes):
        errors.append(
            f"dataset '{FILES}' needs the model's shape: set run-config 'input-shape' and "
            "'num-classes', or 'server-test-path' (a test file that shows them)"
        )
    shape: tuple[int, ...] = ()
    if config.input_shape:
        try:
            shape = parse_shape(config.input_shape)
        except DataError as err:
            errors.append(f"run-config key 'input-shape': {err}")
    elif config.dataset in DATASETS:
        shape = DATASETS[config.dataset].input_shape
    classes = DATASETS[config.dataset].num_classes if config.dataset in DATASETS else 0
    if (
        config.dataset in DATASETS
        and config.partitioner == "pathological"
        and config.labels_per_client > classes
    ):
        errors.append(
            f"run-config key 'labels-per-client' = {config.labels_per_client} is invalid "
            f"for dataset '{config.dataset}': must be <= its {classes} classes"
        )
    if config.model == "cnn" and (config.dataset == SYNTHETIC or (shape and len(shape) != 3)):
        errors.append(
            f"run-config key 'model' = 'cnn' is invalid for dataset '{config.dataset}': "
            "a CNN needs image-shaped data; use 'mlp' or 'auto'"
        )
    return errors


KRUM_STRATEGIES = ("krum", "multikrum")


def min_train_nodes(config: RunConfig) -> int:
    """Return the valid updates a round needs: ``min-train-nodes``, or the strategy's own.

    Krum scores each update by its ``n - f - 2`` nearest others, so it needs
    ``num-malicious + 3``; every other strategy 2.
    """
    if config.min_train_nodes:
        return config.min_train_nodes
    return config.num_malicious + 3 if config.strategy in KRUM_STRATEGIES else 2


def _strategy_errors(config: RunConfig) -> list[str]:
    """Return the errors of strategy parameters that depend on other keys."""
    errors = []
    if config.strategy in KRUM_STRATEGIES and config.min_train_nodes:
        needed = config.num_malicious + 3
        if config.min_train_nodes < needed:
            errors.append(
                f"run-config key 'min-train-nodes' = {config.min_train_nodes} is invalid for "
                f"strategy '{config.strategy}' with num-malicious = {config.num_malicious}: "
                f"must be >= num-malicious + 3 = {needed} (Krum scores each update by its "
                "n - num-malicious - 2 nearest others)"
            )
    if config.strategy == "multikrum" and config.num_krum_selected > min_train_nodes(config):
        errors.append(
            f"run-config key 'num-krum-selected' = {config.num_krum_selected} is invalid: "
            f"must be <= min-train-nodes = {min_train_nodes(config)} (a round may have only "
            "that many updates), or 0 for all but num-malicious"
        )
    if config.strategy == "hybrid" and config.weight_by == NUM_EXAMPLES_KEY:
        errors.append(
            f"run-config key 'weight-by' = '{NUM_EXAMPLES_KEY}' is invalid for strategy "
            "'hybrid': it names the quality metric mixed with num-examples, one of "
            + ", ".join(repr(m) for m in QUALITY_METRICS)
        )
    return errors


def _needs_linear(config: RunConfig, feature: str, why: str) -> list[str]:
    """Return the error of a feature that needs a linear strategy, if the strategy is not."""
    if config.strategy in LINEAR_STRATEGIES:
        return []
    return [
        f"run-config key 'strategy' = '{config.strategy}' cannot be used with {feature}: "
        f"{why}; use one of {', '.join(repr(n) for n in LINEAR_STRATEGIES)}"
    ]


def _he_errors(config: RunConfig) -> list[str]:
    """Return why ``he = true`` cannot work with the rest of the config, if it cannot."""
    if not config.he:
        return []
    errors = _needs_linear(
        config,
        "he = true",
        "homomorphic encryption needs a linear aggregation (a weighted sum of the updates)",
    )
    if config.max_update_norm > 0:
        errors.append(
            f"run-config key 'max-update-norm' = {config.max_update_norm:g} cannot be used "
            "with he = true: the server cannot see the norm of an encrypted update; set it to 0"
        )
    if config.dp == "central":
        errors.append(
            "run-config 'dp' = 'central' cannot be used with he = true: the server clips "
            "each update and cannot see an encrypted one; use dp = 'distributed' (client-level "
            "DP, noise added by the clients) or dp = 'local' with he"
        )
    from privacy.he import MIN_CLIENTS  # imports TenSEAL: only runs with he = true

    if 0 < config.min_train_nodes < MIN_CLIENTS:
        errors.append(
            f"run-config key 'min-train-nodes' = {config.min_train_nodes} cannot be used with "
            f"he = true: homomorphic encryption needs at least {MIN_CLIENTS} clients in every "
            "round (every client decrypts the sum; with 2, each would subtract its own update "
            f"and read the other's); set it to 0 (= {MIN_CLIENTS} under he) or >= {MIN_CLIENTS}"
        )
    return errors


def _dp_errors(config: RunConfig) -> list[str]:
    """Return the errors of the differential-privacy keys taken together."""
    errors = []
    if config.dp == "local":
        if config.dp_target_epsilon == 0 and config.dp_noise_multiplier == 0:
            errors.append(
                "run-config 'dp' = 'local' needs a budget: 'dp-target-epsilon' > 0 (the noise "
                "is calibrated to it) or 'dp-noise-multiplier' > 0; both are 0"
            )
        if STRATEGIES[config.strategy].sends_gradient:
            errors.append(
                f"run-config 'dp' = 'local' cannot be used with strategy '{config.strategy}': "
                "DP-SGD trains a model, but this strategy asks clients for a full-batch "
                "gradient; use dp = 'central' or a model-averaging strategy"
            )
        if STRATEGIES[config.strategy].changes_client_loss:
            errors.append(
                f"run-config 'dp' = 'local' cannot be used with strategy '{config.strategy}': "
                "DP-SGD trains on the plain loss and would silently drop the strategy's "
                "proximal term; use 'fedavg' (or dp = 'central')"
            )
    if config.dp == "distributed" and not config.he:
        errors.append(
            "run-config 'dp' = 'distributed' needs he = true: the clients' noisy updates "
            "are summed encrypted, and each carries only a share of the noise"
        )
    if config.dp in CLIENT_LEVEL_DP:
        if config.dp_target_epsilon == 0 and config.dp_central_noise_multiplier == 0:
            errors.append(
                f"run-config 'dp' = '{config.dp}' needs 'dp-target-epsilon' > 0 (the noise "
                "is calibrated to it) or 'dp-central-noise-multiplier' > 0; both are 0"
            )
        errors += _needs_linear(
            config,
            f"dp = '{config.dp}'",
            "client-level DP clips and noises a mean of updates, which this strategy does "
            "not compute",
        )
    return errors


NODE_STATE_ENV = "FL_NODE_STATE_DIR"
"""Simulated nodes' state directory (simulations cannot set node-config keys)."""
DEFAULT_NODE_STATE_DIR = "~/.fl-node-state"
NODE_SETTINGS_FILE = "node-config.toml"
"""Node-config keys a data holder keeps in its state directory (simulations read them)."""


@dataclass(frozen=True)
class NodeConfig:
    """What a SuperNode says about itself (``--node-config``), validated.

    ``state-dir`` is the data holder's own directory: its secret, its privacy ledgers
    and (by default) its secret HE context; the server never learns or chooses it.
    Simulated nodes, which Flower gives only ``partition-id`` and ``num-partitions``,
    use ``$FL_NODE_STATE_DIR`` (default ``~/.fl-node-state``). Keys a node does not set
    are read from ``<state-dir>/node-config.toml`` if that file exists, so the limits
    of simulated data holders can be set there.
    """

    partition_id: int = _option(0, _at_least(0), "an integer >= 0 (< num-partitions)")
    num_partitions: int = _option(1, _at_least(1), "an integer >= 1")
    data_path: str = _option("", None, "a path to this node's .npz or .csv data ('' = none)")
    label_column: str = _option("label", bool, "the name of the CSV label column")
    state_dir: str = _option("", None, "a directory path ('' = $FL_NODE_STATE_DIR)")
    he_secret_context: str = _option("", None, "a path to the secret HE context")
    dp_max_epsilon: float = _option(
        math.inf, _positive_or_inf, "a number > 0 (inf = no limit of the node's own)"
    )
    dp_min_noise_multiplier: float = _option(0.0, _non_negative, "a number >= 0")
    dp_max_delta: float = _option(1.0, _fraction, "a number in (0, 1]")
    dp_report_metrics: bool = _option(False, None, "true or false")

    def path(self, name: str) -> Path | None:
        """Return a path-valued key as a Path (None when empty)."""
        value: str = getattr(self, name)
        return Path(value).expanduser() if value else None


NODE_CONFIG_KEYS: tuple[str, ...] = tuple(config_key(f.name) for f in fields(NodeConfig))


def node_state_dir(node_config: Mapping[str, Any]) -> Path:
    """Return the node's state directory: ``state-dir``, ``$FL_NODE_STATE_DIR`` or the default."""
    raw = node_config.get("state-dir") or os.environ.get(NODE_STATE_ENV) or DEFAULT_NODE_STATE_DIR
    return Path(str(raw)).expanduser().resolve()


def parse_node_config(node_config: Mapping[str, Any]) -> NodeConfig:
    """Parse a node config (with its state directory's settings file) into a NodeConfig.

    Raises
    ------
    ConfigError
        Listing unknown keys (with a close match), values of the wrong type or
        outside their range, and a data file that does not exist.
    """
    state_dir = node_state_dir(node_config)
    settings: dict[str, Any] = {}
    settings_file = state_dir / NODE_SETTINGS_FILE
    if settings_file.is_file():
        try:
            settings = tomllib.loads(settings_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"node settings file '{settings_file}' is unreadable: {err}") from err
    merged = {**settings, **node_config, "state-dir": str(state_dir)}
    values, errors = _parse_fields(NodeConfig, "node-config", merged)
    if not errors:
        node = NodeConfig(**values)
        if not node.partition_id < node.num_partitions:
            errors.append(
                f"node-config key 'partition-id' = {node.partition_id} is invalid: must be in "
                f"[0, num-partitions = {node.num_partitions})"
            )
        data = node.path("data_path")
        if data is not None and not data.is_file():
            errors.append(
                f"node-config key 'data-path' = '{node.data_path}' is not a readable file"
            )
        if not errors:
            return node
    raise ConfigError("invalid node config: " + "; ".join(errors))


@lru_cache(maxsize=8)
def _parsed_run_config(items: frozenset[tuple[str, Any]]) -> RunConfig:
    return parse_run_config(dict(items))


@lru_cache(maxsize=64)
def _parsed_node_config(items: frozenset[tuple[str, Any]], state_env: str) -> NodeConfig:
    del state_env  # part of the cache key: parse_node_config reads it
    return parse_node_config(dict(items))


def run_config_of(context: Context) -> RunConfig:
    """Return the parsed run config of a ClientApp's context (parsed once per content)."""
    return _parsed_run_config(frozenset(context.run_config.items()))


def node_config_of(context: Context) -> NodeConfig:
    """Return the parsed node config of a ClientApp's context (parsed once per content)."""
    return _parsed_node_config(
        frozenset(context.node_config.items()), os.environ.get(NODE_STATE_ENV, "")
    )
