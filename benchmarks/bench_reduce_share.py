"""Each reducer's own time as a share of the LLM prefill time it saves, on the embedded default model.

For every method at one budget, the same SynthVQA test videos run through ``Runner.answer``
(the path the sweep uses) with that method and with ``full``, alternating method / full per
video and repeating, so both see the same machine load. Reported per method: median
``reduce_ms``, median ``prefill_ms`` of the method and of ``full``, and

    share = reduce_ms / (full prefill_ms - method prefill_ms)

(below 1: the reducer costs less than the prefill it saves). In-LLM selection (FastV,
HoliTom's inner stage) runs inside the prefill, so it is already netted out of the saving.

    .venv/bin/python -m benchmarks.bench_reduce_share --videos 8 --repeats 3 --out share.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from embedded.default import default_model
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.harness.runner import Runner
from tokbench.methods.registry import build_reducer
from tokbench.tasks.synthvqa.utils import DATA_DIR, POST_PROMPT, synthvqa_doc_to_text

METHODS = {
    "uniform_pool": {"retain": 0.10},
    "divprune": {"retain": 0.10},
    "fastv": {"K": 2, "retain": 0.10},
    "holitom": {"K": 2, "retain": 0.10},
    "vqtoken": {"mode": "centroids", "k": "auto"},
}


def questions(count: int) -> list[tuple[str, str]]:
    """(video path, prompt context) of the first ``count`` SynthVQA test samples."""
    docs = [json.loads(line) for line in (DATA_DIR / "test.jsonl").read_text().splitlines()[:count]]
    return [(str(DATA_DIR / d["video"]), synthvqa_doc_to_text(d, {"post_prompt": POST_PROMPT})) for d in docs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = LlavaOnevisionAdapter(str(default_model()), device="cpu", dtype="float32")
    runners = {name: Runner(adapter, build_reducer(name, params), args.frames) for name, params in METHODS.items()}
    full = Runner(adapter, build_reducer("full"), args.frames)
    samples = questions(args.videos)
    for video, context in samples[:1]:  # warm-up
        for runner in [full, *runners.values()]:
            runner.answer(0, video, context, max_new_tokens=1)
    timings: dict[str, dict[str, list[float]]] = {name: {"reduce": [], "prefill": [], "full_prefill": []} for name in METHODS}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            for index, (video, context) in enumerate(samples):
                record = runner.answer(index, video, context, max_new_tokens=1)
                baseline = full.answer(index, video, context, max_new_tokens=1)
                timings[name]["reduce"].append(record.reduce_ms)
                timings[name]["prefill"].append(record.prefill_ms)
                timings[name]["full_prefill"].append(baseline.prefill_ms)
    result = {"videos": args.videos, "repeats": args.repeats, "frames": args.frames, "threads": args.threads, "methods": {}}
    for name, times in timings.items():
        reduce_ms, prefill_ms, full_ms = (statistics.median(times[k]) for k in ("reduce", "prefill", "full_prefill"))
        saved = full_ms - prefill_ms
        result["methods"][name] = {
            "params": METHODS[name],
            "reduce_ms": round(reduce_ms, 3),
            "prefill_ms": round(prefill_ms, 3),
            "full_prefill_ms": round(full_ms, 3),
            "share_of_saved_prefill": round(reduce_ms / saved, 3) if saved > 0 else None,
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
