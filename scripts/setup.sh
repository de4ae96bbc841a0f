#!/usr/bin/env bash
# Create ./.venv (once) and install the app with its pinned dependencies.
# torch is the 2.13.0 CPU build: on x86_64 Linux, PyPI's torch is a multi-GB CUDA build,
# so the CPU wheel (2.13.0+cpu) comes from PyTorch's own CPU index; elsewhere (macOS,
# aarch64 Linux) PyPI's wheel is the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: Python 3.11 is required; '$PYTHON' is $("$PYTHON" --version 2>&1)." >&2
    echo "       Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
        .venv/bin/python -m pip install --quiet --retries 1 "torch==2.13.0+cpu" \
            --extra-index-url https://download.pytorch.org/whl/cpu
    else
        .venv/bin/python -m pip install --quiet torch==2.13.0
    fi
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
