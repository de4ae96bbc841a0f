#!/usr/bin/env bash
# Set up (once) and run the whole test suite, integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
