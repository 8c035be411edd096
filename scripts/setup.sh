#!/usr/bin/env bash
# Create .venv (if missing) and install tokbench with its pinned dependencies and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, transformers, lmms_eval, fvcore, av" \
  || { echo "setup failed: dependencies did not install" >&2; exit 1; }
