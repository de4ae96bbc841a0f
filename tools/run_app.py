"""Run ``flwr run`` as a user does, and exit with what the run achieved.

``flwr run --stream`` exits 0 whatever the ServerApp did, and Flower rejects a
misspelled ``--run-config`` key with a bare "Invalid run configuration" (the key is
named only in the SuperLink's log). This wrapper, which ``scripts/run.sh`` calls:

1. checks the ``--run-config`` overrides against the app's run config first, naming a
   misspelled key with its closest valid one;
2. runs ``flwr run <args> --stream``, passing its output through;
3. reads the run's ``results.json`` (its directory is in the ServerApp's log) and exits
   0 only when the run completed or reached its target accuracy, else 1 with one line
   saying why; a run that did not start has already said why in one ERROR line.

    python -m tools.run_app . --federation-config "num-supernodes=10" --run-config "..."
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.server.results import RunStatus, load_results
from tools.flwr_run import parse_key_values, venv_bin

RESULTS_LINE = re.compile(r"Results directory: (\S.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMPLETE = (RunStatus.COMPLETED, RunStatus.TARGET_REACHED)


def run_config_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Return the run-config overrides ``flwr run`` would get from ``args``.

    A ``--run-config`` value is a TOML file or ``key=value`` pairs, as for ``flwr run``.
    """
    overrides: dict[str, Any] = {}
    values = [
        arg.split("=", 1)[1] if arg.startswith("--run-config=") else args[i + 1]
        for i, arg in enumerate(args)
        if arg.startswith("--run-config=") or (arg == "--run-config" and i + 1 < len(args))
    ]
    for value in values:
        path = Path(value)
        if path.suffix == ".toml" and path.is_file():
            overrides.update(tomllib.loads(path.read_text()))
        else:
            overrides.update(parse_key_values(shlex.split(value), "--run-config"))
    return overrides


def results_directory(line: str) -> Path | None:
    """Return the results directory a ServerApp log line names, if it names one."""
    match = RESULTS_LINE.search(ANSI.sub("", line))
    return Path(match.group(1).strip()) if match else None


def main(argv: Sequence[str] | None = None) -> int:
    """Check the run config, run ``flwr run``, return 0 only for a completed run."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        parse_run_config({**RunConfig().to_dict(), **run_config_overrides(args)})
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "--stream" not in args:
        args.append("--stream")
    directory = None
    with subprocess.Popen(
        [str(venv_bin() / "flwr"), "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as flwr:
        for line in flwr.stdout or ():
            sys.stdout.write(line)
            directory = directory or results_directory(line)
    return flwr.returncode or outcome(directory)


def outcome(directory: Path | None) -> int:
    """Return 0 for a completed run, else 1 after one line saying why."""
    if directory is None:
        print("error: the run wrote no results; its ERROR line above says why", file=sys.stderr)
        return 1
    try:
        status = RunStatus(load_results(directory).status)
    except (OSError, ValueError) as err:
        print(f"error: cannot read the run's results in {directory}: {err}", file=sys.stderr)
        return 1
    if status not in COMPLETE:
        print(f"error: the run ended '{status}'; see {directory}/results.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
