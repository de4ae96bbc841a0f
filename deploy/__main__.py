"""Command line: ``python -m deploy prepare|run DIRECTORY [options]``.

``prepare`` creates (or reuses) the CA, the SuperLink certificate, one key pair per
SuperNode and each node's demo data file, and prints which file goes to which
machine. ``run`` does the same, then starts a SuperLink (TLS, node
authentication) and the SuperNodes on this machine, registers the nodes, runs
``flwr run`` and stops every process it started.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from deploy.federation import Federation
from deploy.files import DeployError
from deploy.nodes import SuperNodeSpec, default_names, prepare_supernodes
from deploy.processes import ProcessError
from deploy.tls import TlsFiles, ensure_tls
from fl_app.config import ConfigError, parse_run_config
from tools.app_source import AppSource
from tools.flwr_run import SimulationError


def _toml_value(text: str) -> Any:
    """Read a value as TOML (``5``, ``0.1``, ``true``, ``'text'``); anything else is a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs as ``flwr run --run-config`` does."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DeployError(f"{what} {pair!r} is not key=value")
        values[key.strip()] = _toml_value(value.strip())
    return values


def _data_paths(pairs: Sequence[str]) -> dict[str, Path]:
    paths = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise DeployError(f"--data {pair!r} is not NODE=PATH")
        paths[name] = Path(path)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("prepare", "create certificates, node keys and data files; print where each goes"),
        ("run", "prepare, start SuperLink and SuperNodes here, flwr run, stop everything"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("directory", type=Path, help="deployment directory")
        command.add_argument("--nodes", type=int, default=2, help="SuperNodes (default 2)")
        command.add_argument(
            "--host",
            action="append",
            default=[],
            help="a name or IP the SuperLink is reached at (repeatable; 127.0.0.1 and "
            "localhost are always in its certificate)",
        )
        command.add_argument(
            "--data",
            action="append",
            default=[],
            metavar="NODE=PATH",
            help="node NODE trains on its own .npz/.csv file (give one per node, or none "
            "for demo partitions of the embedded dataset)",
        )
        command.add_argument(
            "--node-config",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="node-config key for every node, e.g. he-secret-context=/keys/he.ctx or "
            "state-dir=/var/lib/fl/{node} ({node} becomes the node's name)",
        )
        command.add_argument(
            "--run-config",
            default="",
            help='run-config overrides, as for flwr run: "num-server-rounds=5 seed=1"',
        )
    run = commands.choices["run"]
    run.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address the SuperLink binds (default 127.0.0.1; this machine only)",
    )
    run.add_argument("--port", type=int, default=None, help="SuperLink port (default: a free one)")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds for the run")
    return parser


def _print_layout(directory: Path, tls: TlsFiles, specs: list[SuperNodeSpec]) -> None:
    print(f"Deployment directory: {directory}")
    print(f"  every machine:        {tls.ca_certificate}")
    print(f"  operator only:        {tls.ca_key} (keep it off the SuperLink and the nodes)")
    print(f"  SuperLink machine:    {tls.superlink_certificate}, {tls.superlink_key}")
    for spec in specs:
        print(
            f"  {spec.name}: private key {spec.auth_private_key} and data "
            f"{spec.node_config['data-path']} on its machine only; "
            f"register {spec.auth_public_key}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    directory = args.directory.expanduser().resolve()
    try:
        overrides = _key_values(shlex.split(args.run_config), "--run-config")
        config = parse_run_config(overrides)
        tls = ensure_tls(directory, args.host)
        specs = prepare_supernodes(
            directory,
            default_names(args.nodes),
            config,
            _data_paths(args.data),
            _key_values(args.node_config, "--node-config"),
        )
        _print_layout(directory, tls, specs)
        if args.command == "prepare":
            return 0
        with Federation(directory, tls, host=args.bind, port=args.port) as federation:
            federation.start(specs)
            outcome = federation.run(AppSource.installed(), overrides, timeout=args.timeout)
        final = outcome.results["final"]
        log(INFO, "Run finished: %s", final)
        print(f"Results: {outcome.results_dir} (accuracy {final['accuracy']}, {final['status']})")
        return 0
    except (DeployError, ConfigError, ProcessError, SimulationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
