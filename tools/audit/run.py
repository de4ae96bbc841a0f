"""Audit one finished run: what each adversary gets from it, attack by attack.

:func:`audit_run` reads a run's results directory (``results.json``, the published
model) and runs three attacks, each with its adversary:

1. **Membership inference on the published model** (adversary: anyone holding
   ``model.pt``; under homomorphic encryption the published model is encrypted, so the
   adversary is a holder of the secret key — any data holder —, who decrypts it).
   Members are the clients' training examples, non-members their validation examples:
   the same distribution, and no training ever touches them (the server's test set,
   on which accuracy is reported, is not used). Equal numbers of each are scored
   (:attr:`AuditOptions.max_candidates` at most). Attacks: loss threshold (Yeom et
   al. 2018) and online LiRA (Carlini et al. 2022) with
   :attr:`AuditOptions.shadows` shadow models. Shadows are trained *centrally* with
   the run's architecture, learning rate and momentum on random halves of the
   member ∪ non-member pool (every client's data), with a cheaper recipe than the
   run (:func:`shadow_recipe`) and without DP even when the run used DP: a
   miscalibrated shadow weakens LiRA, it cannot fake a signal.
2. **Reconstruction from one client's update as the server receives it** (adversary:
   the server). One small client (:attr:`AuditOptions.batch` examples of client 0's
   training data, one local epoch, batch = all of them: one local step) answers the
   server's round-1 train message through the product's ClientApp
   (:data:`fl_app.client_app.app`, HE mod included) with the run's config. Its reply
   is inverted ("Inverting Gradients", :func:`tools.audit.inversion.invert_update`).
   Under HE the reply is ciphertexts: nothing to invert, no number. Under local DP it
   is the DP-SGD step with the noise multiplier the run's clients applied. Central DP
   noises only the aggregate: the server sees this update in plaintext.
3. **Empirical lower bound on ε** (Steinke, Nasr & Jagielski 2023) for DP runs:
   local DP by :func:`tools.audit.canary.audit_dp_sgd` with the run's σ, sampling
   rate and steps on client 0's data; central DP by
   :func:`tools.audit.canary.audit_client_level` with the run's z, q, rounds and
   clients. A bound above the claimed ε refutes the claim.

The result is a JSON-ready dict, written to ``<run>/audit/audit.json`` with the
reconstruction grid (``reconstruction.png``) and its images (``reconstruction.npz``).
Small silos give noisy attack numbers: every membership number comes with a
bootstrap interval, and the counts behind each number are kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fl_app.config import RunConfig, parse_run_config
from fl_app.data import Split, TaskShape
from fl_app.dp.local import PLAN_KEY
from fl_app.server.results import MODEL_FILE, RunRecord, load_results
from fl_app.server_app import resolve_task
from fl_app.task import train
from privacy.files import atomic_write_bytes
from strategies.protocol import ARRAYS_KEY, CONFIG_KEY

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.json"
GRID_FILE = "reconstruction.png"
IMAGES_FILE = "reconstruction.npz"
FORMAT = "fl-privacy-audit/1"

MEMBERSHIP_ADVERSARY = "anyone holding the published model (model.pt)"
KEY_HOLDER_ADVERSARY = (
    "a holder of the HE secret key (any data holder): the published model is encrypted, "
    "the server alone cannot read it"
)
SERVER_ADVERSARY = "the server: the weights it sent and one client's reply as received"
NO_DP = "no differential privacy: no ε to test"


class AuditError(ValueError):
    """The run cannot be audited as asked (no model, no key, unknown client count)."""


@dataclass(frozen=True)
class AuditOptions:
    """How hard each attack tries (defaults: a few seconds per run on one CPU thread)."""

    shadows: int = 4
    """LiRA shadow models (even; the paper uses 64+, fewer means a weaker attack)."""
    shadow_epochs: int = 0
    """Epochs per shadow; 0 = :func:`shadow_recipe`'s choice."""
    shadow_batch: int = 0
    """Batch size of shadow training; 0 = :func:`shadow_recipe`'s choice."""
    max_candidates: int = 300
    """At most this many non-members (and as many members) are scored."""
    bootstrap: int = 1000
    """Bootstrap resamples of the AUC interval."""
    batch: int = 1
    """Examples of the small client whose update is inverted (1 to 4 is sensible)."""
    restarts: int = 2
    iterations: int = 200
    canaries: int = 0
    """Canaries of the ε audit; 0 = 640 (local DP) or 2000 (client-level DP)."""
    seed: int = 0
    """Seeds the attacks' randomness, together with the run's seed (:func:`audit_seed`)."""

    def to_dict(self) -> dict[str, int]:
        """Return the options as plain JSON types."""
        return asdict(self)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class FinishedRun:
    """A finished run's record, parsed config, task shape and client count."""

    directory: Path
    record: RunRecord
    config: RunConfig
    shape: TaskShape
    num_clients: int

    @property
    def rounds(self) -> int:
        """Rounds the run completed."""
        return len(self.record.rounds)


def infer_num_clients(record: RunRecord, config: RunConfig) -> int:
    """Return the run's client count from its rounds (every client is asked when q = 1).

    Raises
    ------
    AuditError
        When clients were sampled (``fraction-train < 1``): pass the count instead.
    """
    seen = max((max(len(r.clients), r.num_clients) for r in record.rounds), default=0)
    if config.fraction_train < 1.0 or seen < 2:
        raise AuditError(
            f"cannot tell how many clients the run had (fraction-train "
            f"{config.fraction_train:g}, at most {seen} replies in a round): pass --clients"
        )
    return seen


def load_run(directory: Path, num_clients: int | None = None) -> FinishedRun:
    """Read a finished run directory.

    Raises
    ------
    AuditError
        If it holds no results, or the client count cannot be inferred.
    """
    try:
        record = load_results(directory)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AuditError(f"{directory} holds no readable results.json: {err}") from err
    config = parse_run_config(record.config)
    shape, _ = resolve_task(config)
    clients = num_clients or infer_num_clients(record, config)
    return FinishedRun(directory, record, config, shape, clients)


def build_architecture(run: FinishedRun, seed: int) -> torch.nn.Module:
    """Return a freshly initialised model of the run's architecture."""
    from fl_app.model import build_model

    config, shape = run.config, run.shape
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(config.model, shape.input_shape, shape.num_classes, config.prefers_mlp)


def published_model(run: FinishedRun, he_secret: Path | None) -> tuple[torch.nn.Module, str]:
    """Return the run's published model and who can read it.

    ``model.pt`` as saved; ``model-encrypted.npz`` decrypted with ``he_secret``.

    Raises
    ------
    AuditError
        If there is no model, or the model is encrypted and no key was given.
    """
    from fl_app.he.server import ENCRYPTED_MODEL_FILE

    model = build_architecture(run, 0)
    plain = run.directory / MODEL_FILE
    encrypted = run.directory / ENCRYPTED_MODEL_FILE
    if plain.is_file():
        state = torch.load(plain, map_location="cpu", weights_only=True)
        adversary = MEMBERSHIP_ADVERSARY
    elif encrypted.is_file():
        if he_secret is None or not he_secret.is_file():
            raise AuditError(
                f"{encrypted} is encrypted: pass the data holders' secret HE context "
                f"(--he-secret-context), got {he_secret}"
            )
        from fl_app.he.keys import load_context_file
        from privacy.he_model import EncryptedModel

        key = load_context_file(he_secret, secret=True)
        arrays = EncryptedModel.from_bytes(encrypted.read_bytes()).decrypt(key)
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
        adversary = KEY_HOLDER_ADVERSARY
    else:
        raise AuditError(f"{run.directory} holds neither {MODEL_FILE} nor {ENCRYPTED_MODEL_FILE}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, adversary


def audit_seed(run: FinishedRun, options: AuditOptions) -> int:
    """Return the seed of an audit's randomness: the audit's ``seed`` and the run's.

    Runs of several seeds thus get independent audits (member draws, shadows, canaries),
    so the spread over seeds includes the attacks' own randomness.
    """
    return int(np.random.SeedSequence([options.seed, run.config.seed]).generate_state(1)[0])


def _context(run_config: dict[str, Any], node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=0, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def client_splits(run: FinishedRun) -> list[tuple[Split, Split]]:
    """Return every simulated client's ``(train, val)`` split, as the ClientApp loads it."""
    from fl_app.client_app import client_setup

    splits = []
    for partition in range(run.num_clients):
        context = _context(
            run.config.to_dict(),
            {"partition-id": partition, "num-partitions": run.num_clients},
        )
        data = client_setup(context, run.shape).data
        splits.append((data.train, data.val))
    return splits


def _concat(parts: list[Split]) -> Split:
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _take(split: Split, index: np.ndarray) -> Split:
    return Split(split.x[index], split.y[index])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread (the machine is shared with the runs); restore after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def quiet_flower() -> Iterator[None]:
    """Silence Flower's INFO lines (the ClientApp and its mods log each message)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------- 1. membership


def shadow_recipe(run: FinishedRun, options: AuditOptions) -> tuple[int, int]:
    """Return ``(epochs, batch size)`` of shadow training.

    Each example of the run is seen ``rounds x local-epochs`` times; shadows see theirs
    as often, at most 10 times, in batches of at least 64 (per-step cost dominates on
    these small models): cheaper than the run, so a weaker LiRA than one with
    the run's exact recipe.
    """
    epochs = options.shadow_epochs or max(1, min(run.rounds * run.config.local_epochs, 10))
    batch = options.shadow_batch or max(run.config.batch_size, 64)
    return epochs, batch


def membership_audit(
    run: FinishedRun,
    target: torch.nn.Module,
    adversary: str,
    splits: list[tuple[Split, Split]],
    options: AuditOptions,
) -> dict[str, Any]:
    """Score members against non-members with the loss threshold and online LiRA."""
    from tools.audit.membership import lira_scores, loss_threshold_scores, roc_summary

    started = time.perf_counter()
    seed = audit_seed(run, options)
    rng = np.random.default_rng(seed)
    train_all = _concat([train for train, _ in splits])
    val_all = _concat([val for _, val in splits])
    size = min(len(val_all), len(train_all), options.max_candidates)
    member_index = rng.permutation(len(train_all))
    nonmember_index = rng.permutation(len(val_all))
    members = _take(train_all, member_index[:size])
    nonmembers = _take(val_all, nonmember_index[:size])
    population = _concat(
        [_take(train_all, member_index[size:]), _take(val_all, nonmember_index[size:])]
    )
    epochs, batch = shadow_recipe(run, options)
    config = run.config

    def train_shadow(split: Split, seed: int) -> torch.nn.Module:
        shadow = build_architecture(run, seed)
        train(
            shadow,
            split,
            epochs=epochs,
            batch_size=batch,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            seed=seed,
        )
        return shadow

    loss = roc_summary(
        loss_threshold_scores(target, members),
        loss_threshold_scores(target, nonmembers),
        bootstrap=options.bootstrap,
        seed=seed,
    )
    candidates = _concat([members, nonmembers])
    scores = lira_scores(
        target,
        candidates,
        train_shadow,
        population=population,
        num_shadows=options.shadows,
        online=True,
        seed=seed,
    )
    lira = roc_summary(scores[:size], scores[size:], bootstrap=options.bootstrap, seed=seed)
    return {
        "status": "measured",
        "adversary": adversary,
        "members": "clients' training examples",
        "nonmembers": "clients' validation examples (never trained on)",
        "num_members": size,
        "num_nonmembers": size,
        "shadows": options.shadows,
        "shadow_training": (
            f"central, the run's architecture, SGD lr {config.learning_rate:g} momentum "
            f"{config.momentum:g}, {epochs} epochs, batch {batch}, no DP, on random halves of "
            f"{len(candidates) + len(population)} member and non-member examples"
        ),
        "loss": loss.to_dict(),
        "lira": lira.to_dict(),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------- 2. reconstruction


def _set_task_identity() -> None:
    """Let this process build Messages (Flower requires a run ID outside its processes)."""
    from flwr.supercore.task_identity import TaskIdentity

    if getattr(TaskIdentity, "_run_id", None) is None:
        TaskIdentity.run_id = 0
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1


def _noise_multiplier(record: RunRecord) -> float | None:
    value = record.largest("dp-noise-multiplier")
    return float(value) if value else None


def small_client_config(run: FinishedRun, batch: int) -> dict[str, Any]:
    """Return the run config the small client runs with: the run's, one local step.

    ``local-epochs = 1`` and ``batch-size`` = its example count. Under local DP the
    noise multiplier is the one the run's clients applied (with no ε ceiling: one step
    of a client with a handful of examples costs more ε than a round of the run).
    """
    overrides: dict[str, Any] = {"local-epochs": 1, "batch-size": batch}
    sigma = _noise_multiplier(run.record)
    if run.config.dp == "local" and sigma:
        overrides.update({"dp-noise-multiplier": sigma, "dp-target-epsilon": 0.0})
    return parse_run_config({**run.config.to_dict(), **overrides}).to_dict()


def train_message(run: FinishedRun, state: dict[str, torch.Tensor]) -> Message:
    """Return the server's round-1 train message: the global arrays and the round config.

    The config is the strategy's own (:func:`fl_app.server.factory.build_base_strategy`),
    with the linear rule under HE and a noise share under distributed DP, as the
    product's server wrappers add them.
    """
    from fl_app.server.factory import build_base_strategy

    config = run.config
    strategy = build_base_strategy(config)
    record = strategy.round_config(1, ConfigRecord({PLAN_KEY: "audit", **run.shape.to_config()}))
    if config.he and strategy.linear_rule is not None:
        record = ConfigRecord({**dict(record), **strategy.linear_rule.to_config()})
    if config.dp == "distributed":
        from fl_app.he.records import share_config
        from privacy.client_level import NoiseShare
        from privacy.he import MIN_CLIENTS

        share = NoiseShare(
            shares=MIN_CLIENTS,
            expected_clients=config.fraction_train * run.num_clients,
            noise_multiplier=_noise_multiplier(run.record) or 1.0,
            clipping_norm=config.dp_clipping_norm,
        )
        record = ConfigRecord({**dict(record), **share_config(share)})
    _set_task_identity()
    message = Message(
        RecordDict({ARRAYS_KEY: ArrayRecord(state), CONFIG_KEY: record}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    message.metadata.__dict__["_message_id"] = "audit-round-1"
    return message


def received_update(
    reply: Message, sent: dict[str, np.ndarray], gradient: bool = False
) -> dict[str, np.ndarray]:
    """Return what the server holds of a reply: the plaintext change, or the ciphertexts.

    A plaintext reply is new weights (the change is new minus ``sent``), or with
    ``gradient`` (FedSGD) the gradient itself.

    Raises
    ------
    AuditError
        If the client replied with an error.
    """
    if reply.has_error():
        raise AuditError(f"the small client refused to train: {reply.error.reason}")
    records = reply.content.array_records
    if ARRAYS_KEY in records:
        arrays = records[ARRAYS_KEY]
        if gradient:
            return {k: arrays[k].numpy() for k in arrays}
        return {k: arrays[k].numpy() - sent[k] for k in arrays}
    return {k: v.numpy() for record in records.values() for k, v in record.items()}


def reconstruction_audit(
    run: FinishedRun,
    splits: list[tuple[Split, Split]],
    he_secret: Path | None,
    options: AuditOptions,
    out: Path,
) -> dict[str, Any]:
    """Invert one small client's reply as the server receives it; save the grid."""
    from fl_app.client_app import app, client_setup
    from strategies import STRATEGIES
    from tools.audit.inversion import InversionResult, invert_update, save_grid

    started = time.perf_counter()
    seed = audit_seed(run, options)
    rng = np.random.default_rng(seed)
    pool = splits[0][0]
    chosen = rng.choice(len(pool), size=min(options.batch + 1, len(pool)), replace=False)
    run_config = small_client_config(run, options.batch)
    sent_model = build_architecture(run, run.config.seed)  # round 1: the seeded initial model
    state = {k: v.detach().clone() for k, v in sent_model.state_dict().items()}
    sent = {k: v.numpy().copy() for k, v in state.items()}
    with tempfile.TemporaryDirectory(prefix="fl-audit-") as scratch:
        data_file = Path(scratch) / "client.npz"
        np.savez(data_file, x=pool.x[chosen], y=pool.y[chosen])
        node_config: dict[str, Any] = {
            "partition-id": 0,
            "num-partitions": 1,
            "data-path": str(data_file),
            "state-dir": str(Path(scratch) / "node-state"),
        }
        if run.config.he:
            if he_secret is None or not he_secret.is_file():
                raise AuditError(
                    "an HE run's client encrypts with the data holders' secret context: pass "
                    f"--he-secret-context (got {he_secret})"
                )
            node_config["he-secret-context"] = str(he_secret)
        context = _context(run_config, node_config)
        real = client_setup(context, run.shape).data.train
        reply = app(train_message(run, state), context)
    sends_gradient = STRATEGIES[run.config.strategy].sends_gradient
    update = received_update(reply, sent, sends_gradient)
    result = invert_update(
        build_architecture(run, 0),
        sent,
        update,
        batch_size=len(real),
        input_shape=run.shape.input_shape,
        kind="gradient" if sends_gradient else "delta",
        learning_rate=run.config.learning_rate,
        labels=None if len(real) == 1 else real.y,
        real=real.x,
        restarts=options.restarts,
        iterations=options.iterations,
        seed=seed,
    )
    summary: dict[str, Any] = {
        "adversary": SERVER_ADVERSARY,
        "client": (
            f"{len(real)} example(s) of client 0's training data, one local step "
            f"(local-epochs 1, batch {len(real)}) through the product ClientApp, round-1 model"
        ),
        "update": _update_description(run),
        **result.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    images = {"real": real.x}
    if isinstance(result, InversionResult):
        save_grid(real.x, result.reconstruction, out / GRID_FILE)
        images["reconstruction"] = result.reconstruction
        summary["grid"] = GRID_FILE
    else:  # no picture of a reconstruction that does not exist (nor an earlier one)
        (out / GRID_FILE).unlink(missing_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **images)
    atomic_write_bytes(out / IMAGES_FILE, buffer.getvalue())
    summary["seconds"] = time.perf_counter() - started
    return summary


def _update_description(run: FinishedRun) -> str:
    from strategies import STRATEGIES

    config = run.config
    if config.he:
        return "ciphertexts (CKKS): the server has no key"
    if config.dp == "local":
        return "plaintext weights after one DP-SGD step (the run's noise multiplier)"
    plain = (
        "a plaintext full-batch gradient"
        if STRATEGIES[config.strategy].sends_gradient
        else "plaintext weights after one SGD step"
    )
    if config.dp == "central":
        return f"{plain}: central DP clips and noises only the aggregate"
    return plain


# ---------------------------------------------------------------------- 3. canaries


def canary_audit(
    run: FinishedRun, splits: list[tuple[Split, Split]], options: AuditOptions
) -> dict[str, Any]:
    """Return the empirical ε lower bound of the run's DP mechanism, next to its claim."""
    from tools.audit.canary import audit_client_level, audit_dp_sgd

    config, record = run.config, run.record
    claimed = record.final.epsilon if record.final else None
    delta = (record.final.delta if record.final else None) or config.dp_delta or 1e-5
    sigma = _noise_multiplier(record)
    rng = np.random.default_rng(audit_seed(run, options))
    if config.dp == "none":
        return {"status": "not-applicable", "reason": NO_DP}
    if sigma is None:
        return {"status": "not-measured", "reason": "the run recorded no noise multiplier"}
    if config.dp == "local":
        result = audit_dp_sgd(
            sigma,
            sigma,
            num_canaries=options.canaries or 640,
            delta=delta,
            batch_size=config.batch_size,
            epochs=run.rounds * config.local_epochs,
            learning_rate=config.learning_rate,
            max_grad_norm=config.dp_max_grad_norm,
            data=splits[0][0],
            rng=rng,
        )
        mechanism = (
            "sample-level DP-SGD (Opacus) on client 0's data with the run's noise "
            "multiplier, sampling rate and steps; white-box gradient canaries"
        )
    else:  # client-level: "central" or "distributed"
        result = audit_client_level(
            sigma,
            sigma,
            sample_rate=config.fraction_train,
            rounds=run.rounds,
            num_clients=run.num_clients,
            clipping_norm=config.dp_clipping_norm,
            delta=delta,
            accountant=config.dp_accountant,
            num_canaries=options.canaries or 2000,
            rng=rng,
        )
        mechanism = (
            "client-level DP (privacy/client_level.py: Poisson sampling, clipping, noisy "
            "mean over the expected clients) with the run's z, q, rounds and clients; "
            "Dirac canary clients"
        )
        if config.dp == "distributed":
            mechanism += (
                "; the released sum of the n clients' noise shares N(0, (zC)^2/n) has "
                "central DP's distribution, so it is simulated as central DP"
            )
    return {
        "status": "measured",
        "mechanism": mechanism,
        "run_epsilon": claimed,
        **result.to_dict(),
    }


# ------------------------------------------------------------------------- the audit


def _guarded(name: str, part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one attack; an attack that cannot run says why instead of failing the audit."""
    started = time.perf_counter()
    try:
        return part()
    except AuditError as err:
        return {"status": "not-measured", "reason": str(err)}
    except Exception as err:  # an attack's bug must not lose the other two
        return {
            "status": "failed",
            "reason": f"{name} failed: {type(err).__name__}: {err}",
            "seconds": time.perf_counter() - started,
        }


def audit_run(
    directory: Path,
    *,
    num_clients: int | None = None,
    he_secret: Path | None = None,
    options: AuditOptions | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Audit a finished run; write ``audit.json`` (and the grid) into ``out``.

    Parameters
    ----------
    directory : Path
        The run's results directory.
    num_clients : int, optional
        Simulated clients of the run; default: inferred from its rounds.
    he_secret : Path, optional
        The data holders' secret HE context (HE runs: to decrypt the published model
        and to encrypt the small client's reply).
    options : AuditOptions, optional
        How hard each attack tries.
    out : Path, optional
        Where the audit's files go; default ``<directory>/audit``.

    Returns
    -------
    dict[str, Any]
        ``membership``, ``reconstruction``, ``canary`` and ``summary`` (the report's
        numbers), JSON-ready.
    """
    options = options or AuditOptions()
    out = out or directory / AUDIT_DIR
    started = time.perf_counter()
    run = load_run(directory, num_clients)
    with one_thread(), quiet_flower():
        splits = client_splits(run)

        def membership() -> dict[str, Any]:
            target, adversary = published_model(run, he_secret)
            return membership_audit(run, target, adversary, splits, options)

        audit = {
            "format": FORMAT,
            "run": str(directory),
            "options": options.to_dict(),
            "num_clients": run.num_clients,
            "membership": _guarded("membership inference", membership),
            "reconstruction": _guarded(
                "reconstruction",
                lambda: reconstruction_audit(run, splits, he_secret, options, out),
            ),
            "canary": _guarded("canary audit", lambda: canary_audit(run, splits, options)),
        }
    audit["seconds"] = time.perf_counter() - started
    audit["summary"] = summarize_audit(audit)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / AUDIT_FILE, (json.dumps(audit, indent=2) + "\n").encode())
    return audit


def summarize_audit(audit: dict[str, Any]) -> dict[str, Any]:
    """Return the report's numbers of one audit (None where there is none) and the reasons."""
    membership = audit.get("membership", {})
    lira = membership.get("lira") or {}
    loss = membership.get("loss") or {}
    reconstruction = audit.get("reconstruction", {})
    canary = audit.get("canary", {})
    return {
        "mia_auc": lira.get("auc"),
        "mia_auc_low": lira.get("auc_low"),
        "mia_auc_high": lira.get("auc_high"),
        "mia_tpr_at_1pct_fpr": lira.get("tpr_at_1pct_fpr"),
        "mia_tpr_at_0_1pct_fpr": lira.get("tpr_at_0_1pct_fpr"),
        "loss_attack_auc": loss.get("auc"),
        "mia_members": membership.get("num_members"),
        "mia_adversary": membership.get("adversary", ""),
        "mia_note_missing": membership.get("reason", ""),
        "reconstruction_psnr": reconstruction.get("psnr"),
        "reconstruction_ssim": reconstruction.get("ssim"),
        "reconstruction_note": reconstruction.get("reason", ""),
        "epsilon_lower_bound": canary.get("epsilon_lower_bound"),
        "canary_claimed_epsilon": canary.get("claimed_epsilon"),
        "canary_violated": canary.get("violated"),
        "canary_guesses": canary.get("num_guesses"),
        "canary_correct": canary.get("num_correct"),
        "canary_note": canary.get("reason", ""),
        "audit_seconds": audit.get("seconds"),
    }


def load_audit(directory: Path) -> dict[str, Any] | None:
    """Return a run's saved audit (``<run>/audit/audit.json``), or None."""
    path = directory / AUDIT_DIR / AUDIT_FILE
    try:
        audit = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return audit if audit.get("format") == FORMAT else None


def reusable_audit(directory: Path, options: AuditOptions) -> dict[str, Any] | None:
    """Return the saved audit of a run if it was made with these options and is complete."""
    audit = load_audit(directory)
    if audit is None or audit.get("options") != options.to_dict():
        return None
    parts = (audit.get(k, {}) for k in ("membership", "reconstruction", "canary"))
    return None if any(p.get("status") == "failed" for p in parts) else audit
