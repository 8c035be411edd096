#!/usr/bin/env bash
# The main job: install, build the embedded default model if missing, run the sweep, write
# results/<name>/ (leaderboard CSV + Markdown, per-family table, plots).
#   ./run_all.sh                       embedded default (configs/synthvqa.yaml), CPU is fine
#   ./run_all.sh configs/gpu.yaml      real checkpoints and lmms-eval tasks on a GPU box
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
config=${1:-configs/synthvqa.yaml}
if [ "$config" = "configs/synthvqa.yaml" ]; then
  .venv/bin/python -m harness.models.default
fi
.venv/bin/tokbench sweep "$config"
