"""Processes a deployment starts, each with its own log file, stopped by PID in bounded time.

Flower's long-running commands start helpers of their own (``flower-superexec``,
then one ``flwr-serverapp`` or ``flwr-clientapp`` per task), some in a new
session. Stopping only the command we started could leave those behind, so
:meth:`ManagedProcess.stop` takes a snapshot of the whole process tree first,
asks the command to stop (SIGTERM: a SuperNode deactivates itself, a SuperLink
stops its SuperExec), then stops whatever of the snapshot and of the command's
process group is left, and kills what still runs after the timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STOP_TIMEOUT = 10.0


class ProcessError(RuntimeError):
    """A deployment process exited or did not become ready in time."""


@dataclass
class ManagedProcess:
    """One command run in its own session, with stdout and stderr in a log file.

    Parameters
    ----------
    name : str
        What the process is (used in messages), e.g. ``superlink``, ``node-0``.
    command : list[str]
        The command line.
    env : dict[str, str]
        Its environment.
    cwd : Path
        Its working directory.
    log_path : Path
        Where its output goes (appended).
    """

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tree: list[psutil.Process] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        """The PID of the command (it leads its own process group)."""
        if self.process is None:
            raise ProcessError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> None:
        """Start the command in a new session."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def returncode(self) -> int | None:
        """Return the exit code, or None while the process runs."""
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        """Return what the process has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it holds; fail if the process exits or time runs out.

        Raises
        ------
        ProcessError
            With the end of the process's log.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.returncode()
            if code is not None:
                raise ProcessError(
                    f"{self.name} exited with code {code} before {what}; "
                    f"{self.log_path} ends with:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.name}: not {what} after {timeout:.0f} s; "
                    f"{self.log_path} ends with:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; return its code or None."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def request_stop(self) -> None:
        """Note every process the command started, then send the command SIGTERM.

        Lets several processes shut down at the same time; :meth:`stop` finishes.
        """
        if self.process is None or self._tree is not None:
            return
        try:
            self._tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self._tree = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the process and everything it started, by PID; bounded by about 3 x ``timeout``."""
        if self.process is None:
            return
        self.request_stop()
        tree = self._tree or []
        pgid = self.process.pid
        self.wait_exit(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=timeout)
        psutil.wait_procs(alive, timeout=timeout)
