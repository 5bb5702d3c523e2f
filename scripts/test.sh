#!/usr/bin/env bash
# Quick start, part 2: install into .venv/ and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
