"""Harness overhead: ``full`` through our plugin vs lmms-eval's own ``llava_hf`` on the same model.

Both run in one process on the same checkpoint, task (SynthVQA), samples, frames and greedy
settings, through ``simple_evaluate``; runs alternate (ours, theirs, ours, theirs, ...) and the
ratio of median wall times is reported (target: ours <= 1.05x). llava_hf reads videos with
decord: ``pip install decord==0.6.0`` (the ``bench`` extra) first.

    .venv/bin/python benchmarks/bench_overhead.py --limit 24 --repeats 3 --out overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_eval.evaluator import simple_evaluate

from embedded.default import default_model
from tokbench.harness.sweep import task_manager

TASKS = str(Path(__file__).resolve().parents[1] / "tasks")


def timed_run(model: str, model_args: str, limit: int) -> float:
    started = time.perf_counter()
    simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["synthvqa"],
        limit=limit,
        task_manager=task_manager([TASKS]),
        log_samples=False,
        bootstrap_iters=0,
        verbosity="WARNING",
        force_simple=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoint = default_model()
    runs = {
        "tokbench": ("tokbench", f"pretrained={checkpoint},method=full,max_frames_num={args.frames},device=cpu"),
        "llava_hf": ("llava_hf", f"pretrained={checkpoint},max_frames_num={args.frames},device=cpu,device_map=cpu"),
    }
    timed_run(*runs["tokbench"], limit=2)  # warm-up: imports, task loading
    timed_run(*runs["llava_hf"], limit=2)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (model, model_args) in runs.items():
            times[name].append(timed_run(model, model_args, args.limit))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "limit": args.limit,
        "frames": args.frames,
        "seconds": times,
        "median_seconds": medians,
        "ratio_tokbench_over_llava_hf": medians["tokbench"] / medians["llava_hf"],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
