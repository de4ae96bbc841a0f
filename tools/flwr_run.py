"""Drive ``flwr run`` as a user does: submit a run in the background, wait, read its results.

Used by ``fl-compare``, the scripted deployment, tests and benchmarks. A run's
``output-dir`` is given absolutely, so the results can be read when it has finished.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w

from fl_app.server.results import RESULTS_FILE
from tools.app_source import AppSource, stage_app


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin() -> Path:
    """Return the directory holding this interpreter's console scripts (flwr, ...)."""
    return Path(sys.executable).parent


def parse_key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs as ``flwr run --run-config`` does (values read as TOML).

    ``5``, ``0.1``, ``true`` and ``'text'`` are TOML values; anything else is a string.

    Raises
    ------
    ValueError
        Naming ``what`` and the pair that is not ``key=value``.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {pair!r} is not key=value")
        try:
            values[key.strip()] = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = value.strip()
    return values


SUPEREXEC_POLL_SECONDS = 0.05


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Return the environment for Flower commands with their home in ``flwr_home``.

    Runtime dependency installation, the update check and telemetry are off (all
    dependencies are installed; nothing contacts the internet). SuperExec asks for
    new tasks every 50 ms instead of every second (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``).
    ``extra`` adds or replaces variables.
    """
    env = dict(os.environ)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_SECONDS))
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
            **extra,
        }
    )
    return env


class SimulationError(RuntimeError):
    """A local SuperLink or a run on it failed."""


@dataclass
class RunOutcome:
    """A finished ``flwr run``: its results directory, parsed results and CLI output."""

    results_dir: Path
    results: dict[str, Any]
    output: str
    seconds: float


def start_flwr_run(
    app: AppSource,
    connection: str,
    run_config: dict[str, Any],
    *,
    env: dict[str, str],
    cwd: Path,
    work_dir: Path,
    extra_args: list[str] | None = None,
) -> RunHandle:
    """Start ``flwr run <staged app> <connection> --stream`` in the background.

    Parameters
    ----------
    app : AppSource
        The Flower app; its FAB files are staged under ``work_dir`` first (see
        :func:`tools.app_source.stage_app`).
    connection : str
        The SuperLink connection in ``$FLWR_HOME/config.toml`` (``FLWR_HOME`` from ``env``).
    run_config : dict[str, Any]
        Run-config overrides (written to a TOML file in ``work_dir``); must contain
        an absolute ``output-dir``.
    env : dict[str, str]
        Environment of the ``flwr`` command.
    cwd : Path
        Its working directory.
    work_dir : Path
        Where the staged app, the run-config file and the run's log go.
    extra_args : list[str], optional
        More ``flwr run`` arguments.
    """
    results_dir = Path(run_config["output-dir"])
    if not results_dir.is_absolute():
        raise ValueError(f"output-dir must be absolute here, got '{results_dir}'")
    work_dir.mkdir(parents=True, exist_ok=True)
    overrides = work_dir / f"run-config-{time.time_ns()}.toml"
    overrides.write_text(tomli_w.dumps(run_config))
    command = [
        str(venv_bin() / "flwr"),
        "run",
        str(stage_app(app, work_dir)),
        connection,
        "--stream",
        "--run-config",
        str(overrides),
        *(extra_args or []),
    ]
    log_file = (work_dir / f"flwr-run-{time.time_ns()}.log").open("w+")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return RunHandle(process, results_dir, log_file, time.monotonic())


def run_flwr(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` and return it finished, whatever its exit code.

    Raises
    ------
    SimulationError
        If it does not finish within ``timeout`` seconds.
    """
    try:
        return subprocess.run(
            [str(venv_bin() / "flwr"), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise SimulationError(f"flwr {args[0]} did not finish within {timeout:.0f} s") from err


@dataclass
class RunHandle:
    """A ``flwr run`` submitted in the background."""

    process: subprocess.Popen[bytes]
    results_dir: Path
    log_file: IO[str]
    started: float

    def output(self) -> str:
        """Return what ``flwr run`` printed so far (the streamed run log)."""
        self.log_file.flush()
        return Path(self.log_file.name).read_text(errors="replace")

    def _echo(self, echo: IO[str] | None, shown: int) -> int:
        """Copy what the log gained since ``shown`` characters to ``echo``; return the total."""
        if echo is None:
            return shown
        text = self.output()
        echo.write(text[shown:])
        echo.flush()
        return len(text)

    def progress(self) -> dict[str, Any] | None:
        """Return the run's ``results.json`` as written so far, or None before round 1."""
        try:
            return json.loads((self.results_dir / RESULTS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def wait(self, timeout: float, echo: IO[str] | None = None) -> RunOutcome:
        """Wait for the run to end; return its outcome.

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.
        echo : IO[str], optional
            Where to copy the run's log as it comes (the round lines, say).

        Raises
        ------
        SimulationError
            If the run does not finish in time or writes no finished results.
        """
        deadline = time.monotonic() + timeout
        shown = 0
        try:
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
                shown = self._echo(echo, shown)
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            self._echo(echo, shown)
        except subprocess.TimeoutExpired as err:
            self.process.kill()
            self.process.wait()
            raise SimulationError(f"flwr run did not finish within {timeout:.0f} s") from err
        finally:
            self.log_file.close()
        output = Path(self.log_file.name).read_text(errors="replace")
        seconds = time.monotonic() - self.started
        results = self.progress()
        if results is None:
            raise SimulationError(
                f"the run wrote no {self.results_dir / RESULTS_FILE}; flwr run said:\n"
                f"{output[-4000:]}"
            )
        if results.get("status") in (None, "running"):
            raise SimulationError(f"the run did not finish; flwr run said:\n{output[-4000:]}")
        return RunOutcome(self.results_dir, results, output, seconds)
