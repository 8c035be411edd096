#!/usr/bin/env bash
# The main job: install, run the sweep, write results/<name>/ (leaderboard CSV + Markdown,
# per-family table with 95% intervals, plots).
#   ./run_all.sh                       embedded default (configs/synthvqa.yaml: the committed
#                                      checkpoints/tiny-llava-ov-synthvqa on SynthVQA), CPU is fine
#   ./run_all.sh configs/gpu.yaml      real checkpoints and lmms-eval tasks on a GPU box
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
.venv/bin/tokbench sweep "${1:-configs/synthvqa.yaml}"
