"""A private local SuperLink for simulations, on free ports, stopped by PID.

``flwr run .`` normally starts a managed SuperLink in the background on fixed ports
(39091) under ``$FLWR_HOME`` and leaves it running. Tests, benchmarks and
``fl-compare`` need runs that are isolated and leave nothing behind, so
:class:`LocalSuperLink` starts the same SuperLink command itself, on free ports, in
its own ``FLWR_HOME``, with runtime dependency installation disabled, submits runs
through the ``flwr`` CLI (the code path users run), and stops the SuperLink and
everything it started by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from fl_app.config import NODE_STATE_ENV
from tools.app_source import AppSource
from tools.flwr_run import (
    RunHandle,
    RunOutcome,
    SimulationError,
    flower_env,
    free_port,
    start_flwr_run,
    venv_bin,
)

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def superlink_family(pid: int, flwr_home: Path | None) -> list[psutil.Process]:
    """Return a SuperLink process and every live process it started, directly or not.

    The SuperLink starts ``flower-superexec`` in a new session, which starts the
    simulation (ServerApp, Ray and its actors) in yet another one, so process groups
    do not cover them: the family is the SuperLink's descendants plus every process
    that inherited its ``FLWR_HOME`` (when it has one of its own).
    """
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        found[root.pid] = root
        found.update({p.pid: p for p in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        return []
    if flwr_home is not None:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("FLWR_HOME") == str(flwr_home):
                    found[process.pid] = process
    found.pop(os.getpid(), None)
    return list(found.values())


def terminate(processes: list[psutil.Process]) -> None:
    """Send SIGTERM, wait (bounded), then SIGKILL whatever is still alive."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT)


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
    node_state : Path, optional
        The simulated nodes' state directory (secrets, privacy ledgers), outside
        ``flwr_home``; default ``<flwr_home>-nodes`` next to it.
    """

    def __init__(self, flwr_home: Path, cwd: Path, node_state: Path | None = None) -> None:
        self.flwr_home = flwr_home.resolve()
        self.cwd = cwd.resolve()
        self.node_state = (node_state or flwr_home.with_name(flwr_home.name + "-nodes")).resolve()
        self.port = free_port()
        self.control_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.flwr_home / "local-superlink" / "superlink.log"

    def env(self) -> dict[str, str]:
        """Return the environment for ``flwr`` commands against this SuperLink."""
        return flower_env(
            self.flwr_home,
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(self.port),
            FLWR_LOCAL_CONTROL_API_PORT=str(self.control_port),
            **{NODE_STATE_ENV: str(self.node_state)},
        )

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
        """Return every live process this SuperLink started, directly or not."""
        if self.process is None:
            return []
        return superlink_family(self.process.pid, self.flwr_home)

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (SIGTERM, then SIGKILL)."""
        terminate(self.processes())
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """Kill the SuperLink and every process it started at once (SIGKILL), like a crash."""
        targets = self.processes()
        for process in targets:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(targets, timeout=STOP_TIMEOUT)
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
        app: AppSource,
        run_config: dict[str, Any],
        *,
        num_supernodes: int = 10,
        client_cpus: int = 1,
    ) -> RunHandle:
        """Submit ``flwr run <app> --stream`` in the background and return at once.

        Parameters
        ----------
        app : AppSource
            The Flower app; its FAB files are staged first.
        run_config : dict[str, Any]
            Run-config overrides; must contain an absolute ``output-dir``.
        num_supernodes : int
            Simulated clients.
        client_cpus : int
            CPUs per ClientApp actor (parallel actors = CPUs / client_cpus).
        """
        return start_flwr_run(
            app,
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
        self, app: AppSource, run_config: dict[str, Any], timeout: float = 600.0, **options: int
    ) -> RunOutcome:
        """Submit ``flwr run`` (:meth:`start_run`, with ``options``) and wait until it ends.

        Raises
        ------
        SimulationError
            If the run does not finish within ``timeout`` seconds or writes no
            finished results.
        """
        return self.start_run(app, run_config, **options).wait(timeout)
