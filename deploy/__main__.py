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
from collections.abc import Sequence
from pathlib import Path

from deploy.federation import Federation
from deploy.files import DeployError
from deploy.node_data import check_node_data
from deploy.nodes import SuperNodeSpec, default_names, prepare_supernodes
from deploy.processes import ProcessError
from deploy.tls import TlsFiles, ensure_tls
from fl_app.config import parse_node_config, parse_run_config
from fl_app.he.keys import KEY_DIR, PUBLIC_FILE, secret_context_path
from privacy.he import MIN_CLIENTS
from tools.app_source import AppSource
from tools.flwr_run import SimulationError, parse_key_values
from tools.run_app import outcome as run_outcome


def check_he_keys(directory: Path, public_context: str, specs: list[SuperNodeSpec]) -> None:
    """Refuse ``he = true`` before anything starts unless every key file is in place.

    Also refuses fewer than :data:`~privacy.he.MIN_CLIENTS` SuperNodes: every client
    decrypts the sum, so with two each would read the other's update.

    Raises
    ------
    DeployError
        Naming each missing file and the commands that create and pass the keys (the
        secret context in a folder of its own, which the SuperLink is never pointed at).
    """
    public = (
        Path(public_context) if public_context else directory / "flwr-home" / KEY_DIR / PUBLIC_FILE
    )
    missing = [f"the server's public context {public}"] if not public.is_file() else []
    for spec in specs:
        secret = secret_context_path(parse_node_config(spec.node_config))
        if not secret.is_file():
            missing.append(f"{spec.name}'s secret context {secret}")
    if missing:
        clients, server = directory / "keys" / "clients", directory / "keys" / "server"
        raise DeployError(
            f"he = true needs the HE keys before anything starts; missing: {'; '.join(missing)}. "
            f"Create them with 'fl-he keygen --secret-context {clients}/secret.ctx "
            f"--public-context {server}/public.ctx' (copy the secret context to the SuperNodes "
            f"only), then pass --node-config he-secret-context={clients}/secret.ctx and "
            f"--run-config \"he=true he-public-context='{server}/public.ctx'\""
        )
    if len(specs) < MIN_CLIENTS:
        raise DeployError(
            f"he = true needs at least {MIN_CLIENTS} SuperNodes, got --nodes {len(specs)}: "
            "every client decrypts the sum, so with 2 each would read the other's update"
        )


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
        overrides = parse_key_values(shlex.split(args.run_config), "--run-config")
        config = parse_run_config(overrides)
        data_paths = _data_paths(args.data)
        node_config = parse_key_values(args.node_config, "--node-config")
        check_node_data(config, data_paths, str(node_config.get("label-column", "label")))
        tls = ensure_tls(directory, args.host)
        specs = prepare_supernodes(
            directory, default_names(args.nodes), config, data_paths, node_config
        )
        _print_layout(directory, tls, specs)
        if args.command == "prepare":
            return 0
        if config.he:
            check_he_keys(directory, config.he_public_context, specs)
        with Federation(directory, tls, host=args.bind, port=args.port) as federation:
            federation.start(specs)
            outcome = federation.run(
                AppSource.installed(), overrides, timeout=args.timeout, echo=sys.stdout
            )
        final = outcome.results["final"]
        print(f"Results: {outcome.results_dir} (accuracy {final['accuracy']}, {final['status']})")
        return run_outcome(outcome.results_dir)
    except (DeployError, ValueError, ProcessError, SimulationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
