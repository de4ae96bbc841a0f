#!/usr/bin/env bash
# Set up (once) and run the default federated training: `flwr run .` on the embedded
# digits dataset, 10 simulated clients, FedAvg. Extra arguments go to `flwr run`,
# e.g. scripts/run.sh --run-config "strategy='fedprox' num-server-rounds=10".
# Exits non-zero when the run failed or stopped before completing (tools/run_app.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The app's dependencies are installed in .venv already; stop Flower from
# re-installing them per run with uv (which would download torch again).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m tools.run_app . \
    --federation-config "num-supernodes=${NUM_CLIENTS:-10} client-resources-num-cpus=1" "$@"
