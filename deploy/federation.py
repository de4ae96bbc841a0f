"""A real deployment on this machine: a SuperLink and SuperNodes as processes, with TLS.

:class:`Federation` starts ``flower-superlink`` with TLS and SuperNode
authentication, registers each SuperNode's public key with ``flwr supernode
register``, starts one ``flower-supernode`` per node with its private key and its
node config, submits ``flwr run`` through a connection in its own ``FLWR_HOME``,
and stops every process it started, by PID, in bounded time. Runtime dependency
installation is off everywhere: the app's dependencies are already installed.

Layout under the deployment directory (besides ``ca/``, ``superlink/`` and
``nodes/<name>/`` from :mod:`deploy.tls`, :mod:`deploy.node_keys` and
:mod:`deploy.node_data`)::

    flwr-home/config.toml           the ``flwr`` CLI's connection (rewritten at each start)
    flwr-home/                      also the SuperLink's FLWR_HOME (installed FABs)
    nodes/<name>/flwr-home/         each SuperNode's FLWR_HOME
    nodes/<name>/node-config.toml   the node config it was started with (rewritten at each start)
    logs/superlink.log, logs/<name>.log
    outputs/                        results of runs without an absolute ``output-dir``
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from logging import INFO
from pathlib import Path
from typing import IO, Any

import tomli_w
from cryptography import x509
from flwr.common.logger import log

from deploy.files import DeployError
from deploy.node_keys import node_directory
from deploy.nodes import SuperNodeSpec
from deploy.processes import ManagedProcess, ProcessError
from deploy.tls import TlsFiles, certificate_hosts
from fl_app.server.results import unused_timestamped
from tools.app_source import AppSource
from tools.flwr_run import (
    RunOutcome,
    flower_env,
    free_port,
    run_flwr,
    start_flwr_run,
    venv_bin,
)

CONNECTION = "deployment"
STARTUP_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0
_BIND_ALL = ("0.0.0.0",)


class Federation:
    """A SuperLink and its SuperNodes on this machine, with TLS and node authentication.

    Use as a context manager: every process it started is stopped on exit.

    Parameters
    ----------
    directory : Path
        The deployment directory (certificates, keys, logs, Flower homes).
    tls : TlsFiles
        The CA and SuperLink certificate (see :func:`deploy.tls.ensure_tls`); the
        certificate must cover ``host`` (or 127.0.0.1 when binding all addresses).
    host : str
        Address the SuperLink binds. 127.0.0.1 keeps it on this machine; a real
        deployment binds the address SuperNodes reach (or 0.0.0.0).
    port : int, optional
        The SuperLink's port (Fleet, Control and Runtime APIs); a free one if None.
    """

    def __init__(
        self, directory: Path, tls: TlsFiles, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.directory = directory.resolve()
        self.tls = tls
        self.host = host
        self.port = port or free_port()
        connect_host = "127.0.0.1" if host in _BIND_ALL else host
        certificate = x509.load_pem_x509_certificate(tls.superlink_certificate.read_bytes())
        if connect_host.lower() not in certificate_hosts(certificate):
            raise DeployError(
                f"{tls.superlink_certificate} is not valid for '{connect_host}' (it covers "
                f"{', '.join(sorted(certificate_hosts(certificate)))}); bind one of those or "
                "prepare the deployment with --host for it"
            )
        if ":" in connect_host:
            connect_host = f"[{connect_host}]"
        self.address = f"{connect_host}:{self.port}"
        self.flwr_home = self.directory / "flwr-home"
        self.log_dir = self.directory / "logs"
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.node_ids: dict[str, int] = {}
        self.node_configs: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ SuperLink
    def _write_connection(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        config = {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {
                    "address": self.address,
                    "root-certificates": str(self.tls.ca_certificate.resolve()),
                },
            }
        }
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(config))

    def _healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls.ca_certificate))
        try:
            with urllib.request.urlopen(
                f"https://{self.address}/health", timeout=1.0, context=context
            ):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def start_superlink(self) -> None:
        """Start ``flower-superlink`` with TLS and node authentication; wait until it answers."""
        self._write_connection()
        command = [
            str(venv_bin() / "flower-superlink"),
            "--ssl-ca-certfile",
            str(self.tls.ca_certificate),
            "--ssl-certfile",
            str(self.tls.superlink_certificate),
            "--ssl-keyfile",
            str(self.tls.superlink_key),
            "--enable-supernode-auth",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--isolation",
            "subprocess",
            "--disable-runtime-dependency-installation",
        ]
        self.superlink = ManagedProcess(
            "superlink",
            command,
            flower_env(self.flwr_home),
            self.directory,
            self.log_dir / "superlink.log",
        )
        self.superlink.start()
        log(
            INFO,
            "SuperLink PID %d on %s (TLS, node authentication)",
            self.superlink.pid,
            self.address,
        )
        self.superlink.wait_until(self._healthy, STARTUP_TIMEOUT, "answering over TLS")

    # --------------------------------------------------------------- flwr CLI
    def flwr(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run a ``flwr`` CLI command against this SuperLink; return its stdout.

        Raises
        ------
        DeployError
            If the command fails, with its output.
        """
        completed = run_flwr(
            list(args), env=flower_env(self.flwr_home), cwd=self.directory, timeout=timeout
        )
        if completed.returncode != 0:
            raise DeployError(
                f"flwr {' '.join(args)} failed with code {completed.returncode}:\n"
                f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
            )
        return completed.stdout

    @staticmethod
    def _json(output: str) -> dict[str, Any]:
        """Return the JSON object a ``flwr ... --format json`` command printed last."""
        start = output.rfind("\n{") + 1 if "\n{" in output else output.find("{")
        return json.loads(output[start:])

    def register(self, spec: SuperNodeSpec) -> int:
        """Register a node's public key (``flwr supernode register``); return its node ID."""
        output = self.flwr(
            "supernode", "register", str(spec.auth_public_key), CONNECTION, "--format", "json"
        )
        node_id = int(self._json(output)["node-id"])
        self.node_ids[spec.name] = node_id
        log(INFO, "Registered SuperNode %s: node ID %d", spec.name, node_id)
        return node_id

    def node_status(self) -> dict[int, str]:
        """Return each registered node's status (``registered``, ``online``, ``offline``)."""
        output = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        return {int(n["node-id"]): n["status"] for n in self._json(output)["nodes"]}

    # -------------------------------------------------------------- SuperNodes
    def start_supernode(self, spec: SuperNodeSpec) -> ManagedProcess:
        """Start ``flower-supernode`` for ``spec`` (it needs not be registered)."""
        home = node_directory(self.directory, spec.name)
        node_config = home / "node-config.toml"
        home.mkdir(parents=True, exist_ok=True)
        node_config.write_text(tomli_w.dumps(spec.node_config))
        self.node_configs[spec.name] = dict(spec.node_config)
        command = [
            str(venv_bin() / "flower-supernode"),
            "--root-certificates",
            str(self.tls.ca_certificate),
            "--superlink",
            self.address,
            "--auth-supernode-private-key",
            str(spec.auth_private_key),
            "--node-config",
            str(node_config),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
        process = ManagedProcess(
            spec.name,
            command,
            flower_env(home / "flwr-home"),
            home,
            self.log_dir / f"{spec.name}.log",
        )
        process.start()
        self.supernodes[spec.name] = process
        log(INFO, "SuperNode %s PID %d", spec.name, process.pid)
        return process

    def wait_online(self, names: list[str], timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the named (registered) SuperNodes are online.

        Raises
        ------
        ProcessError
            If one exits or they are not all online in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.node_status()
            offline = [n for n in names if status.get(self.node_ids[n]) != "online"]
            if not offline:
                return
            for name in offline:
                code = self.supernodes[name].returncode()
                if code is not None:
                    raise ProcessError(
                        f"SuperNode {name} exited with code {code}; "
                        f"{self.supernodes[name].log_path} ends with:\n"
                        f"{self.supernodes[name].log_text()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"SuperNodes {', '.join(offline)} not online after {timeout:.0f} s"
                )
            time.sleep(0.5)

    def start(self, specs: list[SuperNodeSpec]) -> None:
        """Start the SuperLink, register every SuperNode, start them, wait until online."""
        self.start_superlink()
        for spec in specs:
            self.register(spec)
        for spec in specs:
            self.start_supernode(spec)
        self.wait_online([s.name for s in specs])

    # ------------------------------------------------------------------- runs
    def run(
        self,
        app: AppSource,
        run_config: dict[str, Any],
        timeout: float = 900.0,
        echo: IO[str] | None = None,
    ) -> RunOutcome:
        """Submit ``flwr run <app> deployment --stream`` and return the finished run.

        ``output-dir`` defaults to ``outputs/<UTC time>`` under the deployment
        directory; a relative one is taken relative to it. ``echo`` receives the run's
        log as it comes.
        """
        config = dict(run_config)
        outputs = self.directory / "outputs"
        output_dir = Path(config.get("output-dir") or unused_timestamped(outputs))
        config["output-dir"] = str(
            output_dir if output_dir.is_absolute() else self.directory / output_dir
        )
        handle = start_flwr_run(
            app,
            CONNECTION,
            config,
            env=flower_env(self.flwr_home),
            cwd=self.directory,
            work_dir=self.directory / "staged-app",
        )
        return handle.wait(timeout, echo)

    # -------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the SuperNodes, then the SuperLink, each with everything it started."""
        for process in self.supernodes.values():
            process.request_stop()
        for process in self.supernodes.values():
            process.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
