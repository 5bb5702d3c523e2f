#!/usr/bin/env bash
# Quick start, part 1: install into .venv/ and run the demo on the embedded store (no server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lookalike demo
