"""Peak memory of every method at 32 frames on a random-weight model with LLaVA-OV-0.5B geometry.

The model is built in code (no download) and cached under the gitignored ``.cache/``: the exact
LLaVA-OV-0.5B configuration (``embedded/reference_configs.py``: SigLIP so400m 384/14, 27x27 =
729 patches per frame pooled 2x2 to 14x14 = 196; Qwen2-0.5B's decoder, hidden 896, 14 query / 2
KV heads), depth cut to ``--vision-layers`` (2) and ``--text-layers`` (4, so that FastV's K=2
and HoliTom's K=auto (3) fit), fp32 weights, and the vocabulary cut to ``SMALL_VOCAB`` rows
instead of Qwen2's 152k: the embedding table adds the same constant to every method's peak, so
leaving it out makes the ratios stricter, not looser.

Each method runs in its own subprocess (default parameters; ``Runner.answer`` as ``tokbench ask``
runs it, 2 new tokens) on the same synthetic 32-frame clip. Two peaks per run, each over
``full``'s (target: within 1.2x):

* the sample's peak: the process's peak resident set (``VmHWM``, what ``ru_maxrss`` reports;
  read before the reset below and at the end, the larger of the two);
* the peak from the reducer on: the kernel's peak resident set (``VmHWM``) is reset
  (``/proc/self/clear_refs``) when ``reduce_visual`` starts, so this peak covers reduction, the
  in-LLM step, prefill and decoding, which is where methods differ.

``--set RUN:KEY=VALUE`` overrides a run's parameter.

    .venv/bin/python -m benchmarks.bench_method_memory --vision-layers 1 --out .cache/bench_method_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
SMALL_VOCAB = 512
METHOD_RUNS = {
    "full": {},
    "fastv": {},
    "fastv_all_queries": {"score": "all_queries"},
    "divprune": {},
    "holitom": {},
    "uniform_pool": {"retain": "0.25"},
    "uniform_pool_unpooled": {"retain": "0.25", "source": "unpooled"},
    "vqtoken": {},
    "token_dynamics": {"allow_random_weights": "true"},
}


def registry_name(run: str) -> str:
    return run.split("_all_")[0].removesuffix("_unpooled")


def build_checkpoint(out: Path, vision_layers: int, text_layers: int) -> Path:
    """A seeded random LLaVA-OV-0.5B (``embedded/reference_configs.py``), depth cut, small vocabulary."""
    import torch

    from embedded.reference_configs import build_reference_checkpoint

    return build_reference_checkpoint("llava-ov-0.5b", out, vision_layers, text_layers, vocab_size=SMALL_VOCAB, dtype=torch.float32)


def write_clip(path: Path, frames: int) -> Path:
    import numpy as np

    from tests.conftest import write_video

    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, size=(frames, 384, 384, 3), dtype=np.uint8))
    return path


def worker(checkpoint: str, video: str, run: str, frames: int, params: dict[str, str]) -> dict:
    import torch

    from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
    from tokbench.harness.runner import Runner
    from tokbench.methods.registry import build_reducer

    torch.set_num_threads(1)
    reducer = build_reducer(registry_name(run), params)
    adapter = LlavaOnevisionAdapter(checkpoint, device="cpu", dtype="float32")
    runner = Runner(adapter, reducer, frames)
    at_reduce: dict[str, float] = {}
    reduce_visual = reducer.reduce_visual

    def reset_then_reduce(video_tokens):
        at_reduce["peak_before_mb"] = proc_status_mb("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        at_reduce["rss_mb"] = proc_status_mb("VmRSS")
        return reduce_visual(video_tokens)

    reducer.reduce_visual = reset_then_reduce
    loaded = proc_status_mb("VmHWM")
    started = time.perf_counter()
    record = runner.answer(0, video, "What is happening in the video?", 2)  # a path: older checkouts take it too
    seconds = time.perf_counter() - started
    return {
        "run": run,
        "params": reducer.describe_params(),
        "error": record.error,
        "visual_tokens": record.visual_tokens,
        "layer_counts": record.layer_counts,
        "seconds": seconds,
        "reduce_ms": record.reduce_ms,
        "loaded_mb": loaded,
        "peak_mb": max(at_reduce.get("peak_before_mb", 0.0), proc_status_mb("VmHWM")),
        "rss_at_reduce_mb": at_reduce.get("rss_mb"),
        "peak_from_reduce_mb": proc_status_mb("VmHWM"),
    }


def proc_status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--runs", default=",".join(METHOD_RUNS))
    parser.add_argument("--set", action="append", default=[], metavar="RUN:KEY=VALUE", help="override a run's parameter")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", nargs=5, metavar=("CHECKPOINT", "VIDEO", "RUN", "FRAMES", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        checkpoint, video, run, frames, params = args.worker
        print(json.dumps(worker(checkpoint, video, run, int(frames), json.loads(params))))
        return
    runs = {run: dict(METHOD_RUNS[run]) for run in args.runs.split(",")}
    for item in args.set:
        run, pair = item.split(":", 1)
        key, value = pair.split("=", 1)
        runs[run][key] = value
    checkpoint = CACHE / f"ov05b_reference_v{args.vision_layers}_t{args.text_layers}"
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint, args.vision_layers, args.text_layers)
    video = CACHE / f"bench_method_memory_{args.frames}f.mp4"
    if not video.is_file():
        write_clip(video, args.frames)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for run, params in runs.items():
        cmd = [sys.executable, __file__, "--worker", str(checkpoint), str(video), run, str(args.frames), json.dumps(params)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            results[run] = {"run": run, "error": done.stderr.strip().splitlines()[-1]}
        else:
            results[run] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[run]), file=sys.stderr, flush=True)
    full = results["full"]
    print(f"model: {checkpoint.name}; {args.frames} frames; CPU fp32")
    print(f"{'run':22} {'tokens':>7} {'seconds':>8} {'peak MB':>8} {'/ full':>7} {'from reduce MB':>15} {'/ full':>7}  error")
    for run, r in results.items():
        if r.get("peak_from_reduce_mb") is None or r.get("rss_at_reduce_mb") is None:
            print(f"{run:22} {'':>7} {'':>8} {'':>8} {'':>7} {'':>15} {'':>7}  {r['error']}")
            continue
        print(
            f"{run:22} {r['visual_tokens'] or 0:7d} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {r['peak_mb'] / full['peak_mb']:7.2f} "
            f"{r['peak_from_reduce_mb']:15.0f} {r['peak_from_reduce_mb'] / full['peak_from_reduce_mb']:7.2f}  {r['error'] or ''}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"checkpoint": checkpoint.name, "frames": args.frames, "results": results}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
