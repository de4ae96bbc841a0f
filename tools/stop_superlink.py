"""Stop the managed SuperLink that ``flwr run`` left running, and what it started, by PID.

``flwr run .`` starts ``flower-superlink`` in the background on 127.0.0.1 (port
``$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, default 39091) and leaves it running. This
finds the process listening on that port, checks that it is a ``flower-superlink``,
and stops it with its simulation processes; no other SuperLink is touched.

    python -m tools.stop_superlink [--port 39091]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

from tools.local_superlink import superlink_family, terminate

DEFAULT_PORT = int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))


def listening_superlink(port: int) -> psutil.Process | None:
    """Return the ``flower-superlink`` process listening on 127.0.0.1:``port``, if any."""
    for connection in psutil.net_connections(kind="tcp"):
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(connection.pid)
                if any("flower-superlink" in part for part in process.cmdline()):
                    return process
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Stop the managed SuperLink; return the exit code."""
    parser = argparse.ArgumentParser(prog="stop-superlink", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"its HTTP port (default {DEFAULT_PORT})"
    )
    args = parser.parse_args(argv)
    superlink = listening_superlink(args.port)
    if superlink is None:
        print(f"no flower-superlink is listening on port {args.port}; nothing to stop")
        return 0
    home = superlink.environ().get("FLWR_HOME")
    family = superlink_family(superlink.pid, Path(home) if home else None)
    terminate(family)
    alive = [p.pid for p in family if p.is_running()]
    if alive:
        print(f"error: processes {alive} did not stop", file=sys.stderr)
        return 1
    print(f"stopped flower-superlink PID {superlink.pid} and the {len(family) - 1} it started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
