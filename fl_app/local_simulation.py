"""Run the app with ``flwr run`` on a private local SuperLink that we start and stop.

``flwr run .`` normally starts a managed SuperLink in the background on fixed ports
(39091) under ``$FLWR_HOME`` and leaves it running. Tests, benchmarks and
``fl-compare`` need runs that are isolated and leave nothing behind, so this module
starts the same SuperLink command itself, on free ports, in its own ``FLWR_HOME``,
with runtime dependency installation disabled, submits runs through the ``flwr``
CLI (the code path users run), and stops the SuperLink and everything it started by
PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import tomli_w

from fl_app.results import RESULTS_FILE

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin() -> Path:
    """Return the directory holding this interpreter's console scripts (flwr, ...)."""
    return Path(sys.executable).parent


def stage_app(app_dir: Path, staging_root: Path) -> Path:
    """Copy the files that go into the app's FAB to a fresh directory and return it.

    ``flwr run`` walks every file under the app directory before filtering, so a
    virtualenv inside the project costs seconds per run. The staged copy holds
    exactly what ``fab-include`` selects (plus ``pyproject.toml``): the same FAB.
    """
    app_dir = app_dir.resolve()
    pyproject = app_dir / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["fab-include"]
    files = sorted({p for pattern in patterns for p in app_dir.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in [pyproject, *files]:
        digest.update(str(path.relative_to(app_dir)).encode() + b"\0" + path.read_bytes())
    target = staging_root / f"app-{digest.hexdigest()[:16]}"
    if not target.is_dir():
        partial = staging_root / f".{target.name}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for path in [pyproject, *files]:
            destination = partial / path.relative_to(app_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        partial.rename(target)
    return target


class SimulationError(RuntimeError):
    """A local SuperLink or a run on it failed."""


@dataclass
class RunOutcome:
    """A finished ``flwr run``: its results directory, parsed results and CLI output."""

    results_dir: Path
    results: dict[str, Any]
    output: str
    seconds: float


class LocalSuperLink:
    """A ``flower-superlink --simulation`` process on 127.0.0.1 with its own FLWR_HOME.

    Use as a context manager; the process (and the simulation processes it
    spawned) are stopped on exit.

    Parameters
    ----------
    flwr_home : Path
        Private Flower home (config, state database, installed FABs, logs).
    cwd : Path
        Working directory of the SuperLink, hence of the ServerApp: a relative
        ``output-dir`` is resolved against it.
    """

    def __init__(self, flwr_home: Path, cwd: Path) -> None:
        self.flwr_home = flwr_home.resolve()
        self.cwd = cwd.resolve()
        self.port = free_port()
        self.control_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.flwr_home / "local-superlink" / "superlink.log"

    def env(self) -> dict[str, str]:
        """Return the environment for ``flwr`` commands against this SuperLink."""
        env = dict(os.environ)
        env.update(
            {
                "FLWR_HOME": str(self.flwr_home),
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
                "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PATH": f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        return env

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=0.5):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        """Start the SuperLink and wait until it answers (bounded)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        )
        command = [
            str(venv_bin() / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--control-api-address",
            f"127.0.0.1:{self.control_port}",
            "--database",
            str(self.log_path.parent / "state.db"),
            "--log-file",
            str(self.log_path),
            "--disable-runtime-dependency-installation",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._healthy():
            if self.process.poll() is not None:
                raise SimulationError(
                    f"flower-superlink exited with code {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise SimulationError(f"flower-superlink did not start in {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        """Return every live process this SuperLink started, directly or not.

        The SuperLink starts ``flower-superexec`` in a new session, which starts the
        simulation (ServerApp, Ray and its actors) in yet another one, so process groups
        do not cover them. All of them inherit this SuperLink's ``FLWR_HOME``.
        """
        found: dict[int, psutil.Process] = {}
        if self.process is not None:
            try:
                root = psutil.Process(self.process.pid)
                found[root.pid] = root
                found.update({p.pid: p for p in root.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("FLWR_HOME") == str(self.flwr_home):
                    found[process.pid] = process
        found.pop(os.getpid(), None)
        return list(found.values())

    def _signal_all(self, sig: signal.Signals) -> list[psutil.Process]:
        targets = self.processes()
        for process in targets:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        return targets

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (SIGTERM, then SIGKILL)."""
        targets = self._signal_all(signal.SIGTERM)
        _, alive = psutil.wait_procs(targets, timeout=STOP_TIMEOUT)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """Kill the SuperLink and every process it started at once (SIGKILL), like a crash."""
        psutil.wait_procs(self._signal_all(signal.SIGKILL), timeout=STOP_TIMEOUT)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_run(
        self,
        app_dir: Path,
        run_config: dict[str, Any],
        *,
        num_supernodes: int = 10,
        client_cpus: int = 1,
    ) -> RunHandle:
        """Submit ``flwr run <app_dir> --stream`` in the background and return at once.

        Parameters
        ----------
        app_dir : Path
            The Flower app (directory holding ``pyproject.toml``); its FAB files are
            staged first (see :func:`stage_app`).
        run_config : dict[str, Any]
            Run-config overrides; must contain an absolute ``output-dir``.
        num_supernodes : int
            Simulated clients.
        client_cpus : int
            CPUs per ClientApp actor (parallel actors = CPUs / client_cpus).
        """
        return start_flwr_run(
            app_dir,
            "local",
            run_config,
            env=self.env(),
            cwd=self.cwd,
            work_dir=self.flwr_home,
            extra_args=[
                "--federation-config",
                f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus}",
            ],
        )

    def run(
        self,
        app_dir: Path,
        run_config: dict[str, Any],
        *,
        num_supernodes: int = 10,
        client_cpus: int = 1,
        timeout: float = 600.0,
    ) -> RunOutcome:
        """Submit ``flwr run`` (see :meth:`start_run`) and wait until the run has finished.

        Raises
        ------
        SimulationError
            If the run does not finish within ``timeout`` seconds or writes no
            finished results.
        """
        handle = self.start_run(
            app_dir, run_config, num_supernodes=num_supernodes, client_cpus=client_cpus
        )
        return handle.wait(timeout)


def start_flwr_run(
    app_dir: Path,
    connection: str,
    run_config: dict[str, Any],
    *,
    env: dict[str, str],
    cwd: Path,
    work_dir: Path,
    extra_args: list[str] | None = None,
) -> RunHandle:
    """Start ``flwr run <staged app_dir> <connection> --stream`` in the background.

    Parameters
    ----------
    app_dir : Path
        The Flower app; its FAB files are staged under ``work_dir`` first (see
        :func:`stage_app`).
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
        str(stage_app(app_dir, work_dir)),
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

    def progress(self) -> dict[str, Any] | None:
        """Return the run's ``results.json`` as written so far, or None before round 1."""
        try:
            return json.loads((self.results_dir / RESULTS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def wait(self, timeout: float) -> RunOutcome:
        """Wait for the run to end; return its outcome.

        Raises
        ------
        SimulationError
            If the run does not finish in time or writes no finished results.
        """
        try:
            self.process.wait(timeout=timeout)
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
