#!/usr/bin/env bash
# Create .venv (if missing) and install exactly the locked environment: every package at the
# version requirements.lock pins (Linux x86-64, Python 3.11; refresh it with scripts/lock.sh),
# then tokbench itself in editable mode without resolving anything further.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
quiet() { grep -v -e "^WARNING: Location" -e "is neither a file nor a directory" || true; }
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | quiet
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | quiet
.venv/bin/python -c "import torch, torchvision, transformers, lmms_eval, fvcore, av, decord, lmms_eval.evaluator" \
  || { echo "setup failed: dependencies did not install" >&2; exit 1; }
