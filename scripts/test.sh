#!/usr/bin/env bash
# Set up (once) and run the whole test suite, integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Tests run in parallel, a file per worker (PYTEST_WORKERS, default 4: most integration
# tests wait on Flower processes, not on the CPU); later arguments override (-n 0).
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-4}" --dist loadfile "$@"
