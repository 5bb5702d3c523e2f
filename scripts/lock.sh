#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (every extra, hashes, CPython 3.11 on Linux x86-64).
set -euo pipefail
cd "$(dirname "$0")/.."
uvx --from 'uv>=0.9' uv pip compile pyproject.toml --all-extras --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock
