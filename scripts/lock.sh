#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (every extra, hashes, CPython 3.11 on Linux x86-64).
# uv does the resolving; it is installed from PyPI into a throw-away virtual environment, so
# nothing (not even uvx) needs to be installed beforehand. uv keeps the pins already in the lock
# file unless pyproject.toml asks for something else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
uv_env="$(mktemp -d "${TMPDIR:-/tmp}/lookalike-uv.XXXXXX")"
trap 'rm -rf "$uv_env"' EXIT
"$PYTHON" -m venv "$uv_env"
"$uv_env/bin/python" -m pip install --quiet 'uv>=0.9'
"$uv_env/bin/uv" pip compile pyproject.toml --all-extras --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock
