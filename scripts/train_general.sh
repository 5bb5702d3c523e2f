#!/usr/bin/env bash
# The general fine-tuned model (issue 15), by one command: image families built offline from
# installed Debian packages (benchmarks/general.py says which, and why the photos are left out),
# `lookalike train` on them, then near-duplicate copies R@1 before and after. The result is
# mobilenet_v2-arcface-general@N in the registry: LOOKALIKE_MODEL=mobilenet_v2-arcface-general
# selects it (`lookalike rollout` backfills an index with it). Same packages and seed, same
# weights. Arguments go to `lookalike train` (--new-version for another version, --epochs ...).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/lookalike ] || bash scripts/setup.sh
data="$(.venv/bin/python -c 'from pipeline.settings import get_settings; print(get_settings().home / "bench" / "general")')"
.venv/bin/python -m benchmarks.general manifest "$data"
.venv/bin/lookalike train "$data" --manifest "$data/manifest.csv" --label-column identity \
  --name general --no-mirror "$@"
.venv/bin/python -m benchmarks.general check mobilenet_v2-arcface-general
