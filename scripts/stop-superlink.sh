#!/usr/bin/env bash
# Stop the managed SuperLink that `flwr run` (scripts/run.sh) left running in the
# background, and the simulation processes it started, by PID. No other SuperLink on
# the machine is touched. Extra arguments go to tools/stop_superlink.py (--port N).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tools.stop_superlink "$@"
