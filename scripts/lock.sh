#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (with the test extra) for Linux x86-64,
# Python 3.11: every package the set-up installs, transitive ones included, as name==version.
# Uses uv's pip-compatible resolver (installed into .cache/uv-venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null; then
  [ -x .cache/uv-venv/bin/uv ] || { python3 -m venv .cache/uv-venv && .cache/uv-venv/bin/pip install --quiet uv; }
  PATH="$PWD/.cache/uv-venv/bin:$PATH"
fi
uv pip compile pyproject.toml --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command ./scripts/lock.sh --quiet -o requirements.lock
