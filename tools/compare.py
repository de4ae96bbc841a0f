"""``fl-compare``: run privacy settings side by side and write a report a person can read.

Each setting is a set of run-config overrides run through ``flwr run`` on a private
local SuperLink (the code path users run), once per seed. Results land in one
directory: ``comparison.md`` / ``.csv`` / ``.json``, PNG plots, and every run's own
results under ``runs/<setting>/seed-<n>/``. Each setting's simulated data holders keep
their state (secrets, privacy ledgers, HE keys) under ``node-state/<setting>/``.

After the runs, a privacy audit (:mod:`tools.audit.run`; ``--no-audit`` skips it)
attacks every run: membership inference on the published model, reconstruction of a
small client's examples from its update as the server receives it, and an empirical
lower bound on ε for the DP settings. Each run's audit is kept in
``runs/<setting>/seed-<n>/audit/`` and reused when the audit options are the same; its
time is reported apart from the runs'.

Re-running with the same ``--out`` reuses a finished run only when its whole run
config is the one asked for, and resumes an interrupted run from its checkpoint; an
``--out`` that holds a different sweep is refused. The exit code is 0 when every run
completed, 1 when one failed or stopped early (the report is still written), 2 for
bad arguments and 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.he.keys import KEY_DIR, PUBLIC_FILE, SECRET_FILE
from fl_app.he.server import ENCRYPTED_MODEL_FILE
from fl_app.server.checkpoint import CHECKPOINT_FILE
from fl_app.server.results import (
    TIMESTAMP_FORMAT,
    AccuracySource,
    RunRecord,
    RunStatus,
    load_results,
)
from fl_app.server_app import initial_model, resolve_task
from fl_app.task import evaluate
from privacy.files import atomic_write_bytes
from privacy.he import write_key_pair
from privacy.he_model import EncryptedModel
from tools.app_source import AppSource
from tools.audit.run import (
    AUDIT_DIR,
    GRID_FILE,
    IMAGES_FILE,
    AuditError,
    AuditOptions,
    audit_run,
    reusable_audit,
    summarize_audit,
)
from tools.compare_report import print_table, summarize, write_report
from tools.flwr_run import RunHandle, SimulationError, parse_key_values
from tools.local_superlink import LocalSuperLink

SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "dp-local-eps1": {"dp": "local", "dp-target-epsilon": 1.0},
    "dp-local-eps3": {"dp": "local", "dp-target-epsilon": 3.0},
    "dp-local-eps8": {"dp": "local", "dp-target-epsilon": 8.0},
    "dp-central-eps3": {"dp": "central", "dp-target-epsilon": 3.0},
    "dp-central": {"dp": "central", "dp-target-epsilon": 8.0},
    "dp-distributed-eps3": {"he": True, "dp": "distributed", "dp-target-epsilon": 3.0},
    "dp-distributed": {"he": True, "dp": "distributed", "dp-target-epsilon": 8.0},
    "he": {"he": True},
    "he+dp-local-eps8": {"he": True, "dp": "local", "dp-target-epsilon": 8.0},
}
DEFAULT_SETTINGS = tuple(SETTINGS)
SWEEP_FILE = "sweep.json"
UNCHECKED_KEYS = frozenset({"output-dir", "resume-from", "he-public-context"})
"""Run-config keys that differ between two runs of the same sweep without changing it."""
COMPLETE = frozenset({RunStatus.COMPLETED, RunStatus.TARGET_REACHED})


class CompareError(ValueError):
    """The sweep is misconfigured or does not fit its --out directory; nothing has run."""


@dataclass(frozen=True)
class Sweep:
    """What to run: settings x seeds on one base configuration, with ``clients`` nodes."""

    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    base: dict[str, Any]
    clients: int
    out: Path

    def run_dir(self, setting: str, seed: int) -> Path:
        """Return the results directory of one run."""
        return self.out / "runs" / setting / f"seed-{seed}"

    def node_state(self, setting: str) -> Path:
        """Return the simulated data holders' state directory of one setting."""
        return self.out / "node-state" / setting

    def run_config(self, setting: str, seed: int) -> dict[str, Any]:
        """Return the run-config overrides of one run (keys aside, see :func:`he_keys`)."""
        return {**self.base, **SETTINGS[setting], "seed": seed}

    def definition(self) -> dict[str, Any]:
        """Return what two invocations must share to write into the same ``--out``."""
        return {"base": self.base, "clients": self.clients}


def parse_settings(raw: str) -> tuple[str, ...]:
    """Parse ``--settings a,b``; unknown names fail listing the valid ones."""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or not names:
        raise CompareError(
            f"unknown setting(s) {', '.join(repr(n) for n in unknown) or '(none given)'}; "
            f"valid: {', '.join(SETTINGS)}"
        )
    return names


def build_sweep(args: argparse.Namespace) -> Sweep:
    """Validate the command line and every run's config before anything runs."""
    settings = parse_settings(args.settings)
    if args.audit_shadows < 2 or args.audit_shadows % 2:
        raise CompareError(f"--audit-shadows {args.audit_shadows} must be even and >= 2")
    if args.seeds < 1 or args.rounds < 1 or args.clients < 2:
        raise CompareError(
            f"--seeds {args.seeds} and --rounds {args.rounds} must be >= 1 and "
            f"--clients {args.clients} >= 2"
        )
    try:
        extra = parse_key_values(shlex.split(args.run_config), "--run-config")
    except ValueError as err:
        raise CompareError(str(err)) from err
    base = {
        **extra,
        "num-server-rounds": args.rounds,
        "strategy": args.strategy,
        "dataset": args.dataset,
    }
    sweep = Sweep(settings, tuple(range(args.seeds)), base, args.clients, args.out.resolve())
    for setting in settings:
        try:
            parse_run_config({**RunConfig().to_dict(), **sweep.run_config(setting, 0)})
        except ConfigError as err:
            raise CompareError(f"setting '{setting}': {err}") from err
    return sweep


def claim_out_dir(sweep: Sweep) -> None:
    """Refuse an ``--out`` that holds another sweep; record this one's definition.

    Raises
    ------
    CompareError
        Naming what differs, when ``--out`` holds a sweep of other settings.
    """
    path = sweep.out / SWEEP_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != sweep.definition():
            differences = _differences(recorded, sweep.definition())
            raise CompareError(
                f"--out {sweep.out} holds a sweep with {differences}; its runs cannot be "
                "reported with this one's: choose another --out, or the same options"
            )
        return
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(sweep.definition(), indent=2) + "\n").encode())


def _differences(recorded: dict[str, Any], asked: dict[str, Any]) -> str:
    flat_recorded = {**recorded["base"], "clients": recorded["clients"]}
    flat_asked = {**asked["base"], "clients": asked["clients"]}
    keys = sorted(set(flat_recorded) | set(flat_asked))
    return ", ".join(
        f"{key} = {flat_recorded.get(key)!r} (asked: {flat_asked.get(key)!r})"
        for key in keys
        if flat_recorded.get(key) != flat_asked.get(key)
    )


def he_keys(sweep: Sweep, setting: str) -> dict[str, Any]:
    """Create (once) the HE key pair of a setting; return the run config that points at it.

    The secret goes where the setting's simulated nodes look (their state directory),
    the public context to a folder only the server is pointed at.
    """
    if not SETTINGS[setting].get("he"):
        return {}
    secret = sweep.node_state(setting) / KEY_DIR / SECRET_FILE
    public = sweep.out / "server-keys" / setting / PUBLIC_FILE
    if not secret.is_file():
        write_key_pair(secret, public)
    return {"he-public-context": str(public)}


def finished_run(sweep: Sweep, setting: str, seed: int) -> RunRecord | None:
    """Return a finished run of exactly this run config, or None.

    Raises
    ------
    CompareError
        If a finished run there was run with another config (never mixed in).
    """
    run_dir = sweep.run_dir(setting, seed)
    try:
        record = load_results(run_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not RunStatus(record.status).finished:
        return None
    asked = {**RunConfig().to_dict(), **sweep.run_config(setting, seed)}
    changed = sorted(
        key
        for key in set(asked) | set(record.config)
        if key not in UNCHECKED_KEYS and record.config.get(key) != asked.get(key)
    )
    if changed:
        raise CompareError(
            f"{run_dir} holds a finished run with another config ({', '.join(changed)}); "
            "it is not reused: choose another --out"
        )
    return record


def prepare_run_dir(run_dir: Path) -> str:
    """Move an interrupted run aside (never deleting it); return a checkpoint to resume."""
    if not run_dir.exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        return ""
    stamp = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
    aside = run_dir.with_name(f"{run_dir.name}.interrupted-{stamp}")
    suffix = 1
    while aside.exists():
        aside = run_dir.with_name(f"{run_dir.name}.interrupted-{stamp}-{suffix}")
        suffix += 1
    run_dir.rename(aside)
    return str(aside) if (aside / CHECKPOINT_FILE).is_file() else ""


def final_test_accuracy(
    record: RunRecord, run_dir: Path, sweep: Sweep, setting: str
) -> float | None:
    """Return the final model's accuracy on the server's held-out test set.

    Under homomorphic encryption the server cannot evaluate it: the model is decrypted
    here with the setting's simulated data holders' key (as any of them could).
    """
    final = record.final
    if final is not None and final.accuracy_source == AccuracySource.SERVER_TEST_SET:
        return final.accuracy
    encrypted = run_dir / ENCRYPTED_MODEL_FILE
    if not encrypted.is_file():
        return None
    from fl_app.he.keys import load_context_file

    key = load_context_file(sweep.node_state(setting) / KEY_DIR / SECRET_FILE, secret=True)
    arrays = EncryptedModel.from_bytes(encrypted.read_bytes()).decrypt(key)
    config = parse_run_config(record.config)
    shape, test = resolve_task(config)
    if test is None:
        return None
    model = initial_model(config, shape)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    return evaluate(model, test)[1]


class SweepProgress:
    """A progress bar over every round of every run, with an ETA."""

    def __init__(self, console: Console, runs: int, rounds: int) -> None:
        self.rounds = rounds
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} rounds"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: TaskID = self.progress.add_task("starting", total=runs * rounds)
        self.done_runs = 0

    def watch(self, handle: RunHandle, label: str) -> None:
        """Follow one run's rounds until it ends."""
        while handle.process.poll() is None:
            state = handle.progress()
            done = len(state["rounds"]) if state else 0
            stage = f"round {done}/{self.rounds}" if done else "starting Flower and Ray"
            self.update(label, done, stage)
            time.sleep(0.5)

    def update(self, label: str, rounds_done: int, stage: str) -> None:
        """Show a run's stage and the rounds done so far."""
        completed = self.done_runs * self.rounds + min(rounds_done, self.rounds)
        self.progress.update(self.task, description=f"{label} {stage}", completed=completed)

    def run_done(self) -> None:
        """Count one more run as done."""
        self.done_runs += 1
        self.progress.update(self.task, completed=self.done_runs * self.rounds)


def run_sweep(sweep: Sweep, console: Console) -> dict[str, list[tuple[RunRecord, float | None]]]:
    """Run every (setting, seed) not finished yet; return each setting's runs."""
    jobs = [(s, seed) for s in sweep.settings for seed in sweep.seeds]
    runs: dict[str, list[tuple[RunRecord, float | None]]] = {s: [] for s in sweep.settings}
    progress = SweepProgress(console, len(jobs), int(sweep.base["num-server-rounds"]))
    link: LocalSuperLink | None = None
    with progress.progress:
        try:
            for index, (setting, seed) in enumerate(jobs, start=1):
                label = f"[{index}/{len(jobs)}] {setting} seed {seed}"
                run_dir = sweep.run_dir(setting, seed)
                record = finished_run(sweep, setting, seed)
                if record is None:
                    if link is None or link.node_state != sweep.node_state(setting).resolve():
                        if link is not None:
                            link.stop()
                        link = LocalSuperLink(
                            sweep.out / "flwr-home",
                            cwd=sweep.out,
                            node_state=sweep.node_state(setting),
                        )
                        link.start()
                    overrides = {
                        **sweep.run_config(setting, seed),
                        **he_keys(sweep, setting),
                        "output-dir": str(run_dir),
                    }
                    resume_from = prepare_run_dir(run_dir)
                    if resume_from:
                        overrides["resume-from"] = resume_from
                    handle = link.start_run(
                        AppSource.installed(), overrides, num_supernodes=sweep.clients
                    )
                    progress.watch(handle, label)
                    record = RunRecord.from_dict(handle.wait(timeout=3600).results)
                else:
                    console.log(f"{label}: finished with the same config, reused")
                runs[setting].append((record, final_test_accuracy(record, run_dir, sweep, setting)))
                progress.run_done()
        finally:
            if link is not None:
                link.stop()
    return runs


def he_secret(sweep: Sweep, setting: str) -> Path | None:
    """Return the HE secret context of a setting's simulated data holders (None without HE)."""
    if not SETTINGS[setting].get("he"):
        return None
    return sweep.node_state(setting) / KEY_DIR / SECRET_FILE


def _unaudited(status: str, reason: str) -> dict[str, Any]:
    """Return the summary of a run that has no audit, with the reason in every part."""
    part = {"status": status, "reason": reason}
    return summarize_audit({name: part for name in ("membership", "reconstruction", "canary")})


def audit_one(sweep: Sweep, setting: str, seed: int, options: AuditOptions) -> dict[str, Any]:
    """Audit one run (or reuse its audit made with the same options); return its summary."""
    run_dir = sweep.run_dir(setting, seed)
    audit = reusable_audit(run_dir, options)
    if audit is None:
        try:
            audit = audit_run(
                run_dir,
                num_clients=sweep.clients,
                he_secret=he_secret(sweep, setting),
                options=options,
            )
        except AuditError as err:  # the run cannot be audited: say why
            return _unaudited("not-measured", f"audit not possible: {err}")
        except Exception as err:  # an audit's error must not lose the sweep's report
            return _unaudited("failed", f"audit failed: {type(err).__name__}: {err}")
    return audit["summary"]


def audit_sweep(
    sweep: Sweep, options: AuditOptions, console: Console
) -> dict[str, list[dict[str, Any]]]:
    """Audit every run of the sweep; return each setting's audit summaries, seed by seed.

    Each setting's first reconstruction grid is copied to ``reconstruction-<setting>.png``.
    """
    audits: dict[str, list[dict[str, Any]]] = {s: [] for s in sweep.settings}
    jobs = [(s, seed) for s in sweep.settings for seed in sweep.seeds]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} runs audited"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("privacy audit", total=len(jobs))
        for setting, seed in jobs:
            progress.update(task, description=f"privacy audit: {setting} seed {seed}")
            audits[setting].append(audit_one(sweep, setting, seed, options))
            progress.advance(task)
    for setting in sweep.settings:
        grid = sweep.run_dir(setting, sweep.seeds[0]) / AUDIT_DIR / GRID_FILE
        if grid.is_file():
            atomic_write_bytes(sweep.out / f"reconstruction-{setting}.png", grid.read_bytes())
    return audits


def parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(
        prog="fl-compare",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help="comma-separated privacy settings to compare (--list shows them)",
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds per run")
    p.add_argument("--clients", type=int, default=10, help="simulated clients per run")
    p.add_argument("--strategy", default="fedavg", help="aggregation strategy of every run")
    p.add_argument("--dataset", default="digits", help="dataset of every run")
    p.add_argument(
        "--seeds", type=int, default=3, help="runs per setting, seeds 0..N-1 (mean ± std)"
    )
    p.add_argument(
        "--run-config",
        default="",
        help='more run-config keys for every run, as for flwr run: "min-train-nodes=3"',
    )
    p.add_argument("--out", type=Path, default=Path("comparison"), help="report directory")
    p.add_argument(
        "--no-audit",
        action="store_true",
        help="skip the privacy audit (membership inference, reconstruction, canary epsilon)",
    )
    p.add_argument(
        "--audit-shadows",
        type=int,
        default=AuditOptions.shadows,
        help="LiRA shadow models per audited run (even; more = stronger attack, slower)",
    )
    p.add_argument("--list", action="store_true", help="print the setting names and exit")
    return p


def _title(sweep: Sweep) -> str:
    seeds = len(sweep.seeds)
    return (
        f"{sweep.base['strategy']} on {sweep.base['dataset']}, {sweep.clients} clients, "
        f"{sweep.base['num-server-rounds']} rounds, {seeds} seed{'s' if seeds > 1 else ''}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-compare``; return the exit code."""
    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.list:
        print("\n".join(f"{name}: {SETTINGS[name] or 'no privacy add-on'}" for name in SETTINGS))
        return 0
    try:
        sweep = build_sweep(args)
        claim_out_dir(sweep)
    except CompareError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    started = time.monotonic()
    audits: dict[str, list[dict[str, Any]]] = {}
    audit_seconds: float | None = None
    try:
        runs = run_sweep(sweep, console)
        runs_seconds = time.monotonic() - started
        if not args.no_audit:
            audit_started = time.monotonic()
            audits = audit_sweep(sweep, AuditOptions(shadows=args.audit_shadows), console)
            audit_seconds = time.monotonic() - audit_started
    except (SimulationError, CompareError) as err:
        console.print(f"[red]a run failed:[/red] {err}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted:[/yellow] finished runs (and audits) are kept in "
            f"{sweep.out}; run the same command again to resume (finished ones are reused)"
        )
        return 130
    rows = [
        summarize(setting, runs[setting], audits.get(setting, ())) for setting in sweep.settings
    ]
    for row in rows:
        images = sweep.run_dir(row.setting, sweep.seeds[0]) / AUDIT_DIR / IMAGES_FILE
        if row.audits and images.is_file():
            row.reconstruction_images = str(images.relative_to(sweep.out))
    timing = {
        "runs_seconds": runs_seconds,
        "audit_seconds": audit_seconds,
        "runs_own_seconds": sum(
            record.final.seconds_total for r in runs.values() for record, _ in r if record.final
        ),
        "audit_own_seconds": sum(a["audit_seconds"] or 0.0 for r in audits.values() for a in r)
        if audits
        else None,
    }
    write_report(
        rows,
        _title(sweep),
        {**sweep.definition(), "seeds": list(sweep.seeds), "timing": timing},
        sweep.out,
    )
    print_table(rows, console)
    audit_text = "skipped" if audit_seconds is None else f"{audit_seconds:.0f} s"
    console.print(
        f"Sweep took {time.monotonic() - started:.0f} s (runs {runs_seconds:.0f} s, privacy "
        f"audit {audit_text}); report in {sweep.out}"
    )
    incomplete = [
        f"{row.setting} ({status})"
        for row in rows
        for status in row.statuses
        if RunStatus(status) not in COMPLETE
    ]
    if incomplete:
        console.print(f"[red]runs that did not complete:[/red] {', '.join(incomplete)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
