#!/usr/bin/env bash
# GPU check of the real geometries (embedded/gpu_check.py): LLaVA-OV-0.5B, LLaVA-OV-7B and
# LLaVA-Video-7B with their exact widths (depth cut, random weights) on CUDA in bf16 with SDPA
# (and flash-attention 2 if installed): engine vs HF generate, every method at 32 frames,
# CUDA-synchronised timings and peak memory. Writes gpu_check_cuda.json to $OUT if set, else
# results/gpu_check/. Extra arguments go to the module (e.g. --cpu, --quick, --models, --frames).
# Budget: under 8 minutes on one GPU; the whole run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PYTHON" -m embedded.gpu_check "$@"
