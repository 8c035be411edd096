"""Command line: ``tokbench methods | flops | ask | sweep | report``.

Every failure a user can cause (unknown method, bad budget, missing video, typo in a config)
ends with a one-line ``tokbench: error: ...`` message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tokbench.methods.base import MethodError


def parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise MethodError(f"--param {pair!r} must be KEY=VALUE")
        key, value = pair.split("=", 1)
        params[key.strip()] = value.strip()
    return params


def cmd_methods(args: argparse.Namespace) -> None:
    from tabulate import tabulate

    from tokbench.methods.registry import available

    methods = available()
    if args.names:
        print("\n".join(methods))
        return
    rows = []
    for name, cls in methods.items():
        params = ["retain", "tokens"] if cls.takes_budget else []
        params += [f"{p.name}={p.default}" for p in cls.params]
        rows.append([name, cls.stage, ", ".join(params), cls.summary])
    print(tabulate(rows, headers=["method", "stage", "parameters", "what it does"], tablefmt="github"))


def published_style(tflops: float) -> str:
    """TFLOPs as papers print them: one decimal from 1 up, two significant digits below."""
    return f"{tflops:.1f}" if tflops >= 1 else f"{tflops:.2g}"


def cmd_flops(args: argparse.Namespace) -> None:
    from tokbench.harness.flops import paper_flops, parse_resolution, resolve_dims
    from tokbench.methods.registry import build_reducer

    dims = resolve_dims(args.model, parse_resolution(args.resolution))
    result = paper_flops(build_reducer(args.method, parse_params(args.param)), dims, args.frames)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    stages = " + ".join(f"{s['layers']}x{s['tokens']}" for s in result["schedule"])
    print(published_style(result["paper_tflops"]))
    print(
        f"# {args.method} on {dims.name} ({result['geometry']} geometry), {args.frames} frames: {result['visual_tokens_full']} grid tokens "
        f"+ {result['newline_tokens']} newlines ({result['visual_tokens_fed']} fed; full over all fed: "
        f"{published_style(result['paper_tflops_full_fed'])} TFLOPs); "
        f"schedule (layers x tokens) {stages}; {result['percent_of_full']:.1f}% of full (paper convention)",
        file=sys.stderr,
    )


def cmd_ask(args: argparse.Namespace) -> None:
    from tokbench.harness.models import load_adapter
    from tokbench.harness.runner import Runner, measure_prefill_flops
    from tokbench.harness.video import check_video
    from tokbench.methods.registry import build_reducer

    reducer = build_reducer(args.method, parse_params(args.param))
    check_video(args.video)  # a missing or unreadable video fails before the model loads
    if Path(args.model).is_dir():  # so does a checkpoint the method cannot serve (the runner checks hub ids)
        reducer.check_checkpoint(args.model)
    adapter = load_adapter(args.model, device=args.device, dtype=args.dtype)
    runner = Runner(adapter, reducer, args.frames)
    clip = runner.clip(args.video)  # decoded once, for the answer and the FLOPs trace
    record = runner.answer(0, clip, args.question, args.max_new_tokens)
    if record.error:
        raise MethodError(record.error)
    out: dict[str, Any] = record.to_json()
    out["tflops_measured"] = measure_prefill_flops(runner, clip, args.question) / 1e12
    out["method"], out["params"] = reducer.name, reducer.describe_params()
    out.update(adapter.describe())  # model, device, dtype
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return
    print(record.answer)
    for key in ("visual_tokens", "visual_tokens_layer_avg", "tflops_measured", "vision_ms", "reduce_ms", "prefill_ms", "decode_tok_s", "peak_mem_mb"):
        print(f"  {key}: {out[key]}", file=sys.stderr)


def cmd_sweep(args: argparse.Namespace) -> None:
    from tokbench.harness.config import load_config
    from tokbench.harness.sweep import run_sweep

    if args.dry_run and args.slurm is None:
        raise ValueError("--dry-run shows what --slurm would submit: give --slurm too")
    if args.slurm is not None:
        if args.timing_pass is not None:
            raise ValueError("--timing-pass runs here on one device, not through --slurm")
        submit_sweep(args)
        return
    config = load_config(args.config)
    if args.timing_pass is not None:
        config = timing_pass_config(config, args.timing_pass)
    rows = run_sweep(config, progress=not args.quiet, stale_after_s=args.stale_after)
    if not rows:  # a rank other than 0 of a data-parallel worker: rank 0 reports
        return
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"{len(rows)} rows in {config.results_dir / 'leaderboard.csv'} ({len(failed)} failed cells)")


def timing_pass_config(config, samples: int):
    """The sweep on its first ``samples`` samples, in one process, into ``<name>_timing/``."""
    import dataclasses
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--timing-pass runs in one process on one device: start it without torchrun / accelerate launch")
    if samples < 2:
        raise ValueError(f"--timing-pass {samples}: need at least 2 samples (the first is warm-up)")
    return dataclasses.replace(config, name=f"{config.name}_timing", limit=samples if config.limit is None else min(samples, config.limit))


def submit_sweep(args: argparse.Namespace) -> None:
    from tokbench.harness.slurm import sbatch_script, submit_workers

    if args.dry_run:
        print(sbatch_script(args.config, args.slurm))
        return
    jobs = submit_workers(args.config, args.slurm, args.stale_after, cluster=args.submitit_cluster)
    print(f"submitted {len(jobs)} sweep workers: {' '.join(job.job_id for job in jobs)}")
    if args.submitit_cluster != "slurm":  # local / debug: the workers run here; wait for them
        print(f"workers done: {max(job.result() for job in jobs)} rows")


def cmd_report(args: argparse.Namespace) -> None:
    from tokbench.harness.config import load_config
    from tokbench.harness.report import write_reports

    config = load_config(args.config)
    write_reports(config)
    print((config.results_dir / "leaderboard.md").read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    methods = sub.add_parser("methods", help="list registered reduction methods")
    methods.add_argument("--names", action="store_true", help="one name per line, nothing else")
    methods.set_defaults(func=cmd_methods)

    flops = sub.add_parser("flops", help="paper-convention prefill TFLOPs of a method (no weights needed)")
    flops.add_argument("--model", required=True, help="llava-ov-0.5b | llava-ov-7b | llava-ov-72b | llava-video-7b | qwen2.5-vl-3b | qwen2.5-vl-7b | qwen2.5-vl-72b | config.json")
    flops.add_argument("--frames", type=int, default=32)
    flops.add_argument("--resolution", metavar="HxW", help="frame size for Qwen2.5-VL's token geometry (default 448x448)")
    flops.add_argument("--method", required=True)
    flops.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    flops.add_argument("--json", action="store_true")
    flops.set_defaults(func=cmd_flops)

    ask = sub.add_parser("ask", help="answer one question about one video, with its accounting")
    ask.add_argument("--model", required=True, help="checkpoint folder or hub id")
    ask.add_argument("--video", required=True)
    ask.add_argument("--question", required=True)
    ask.add_argument("--method", default="full")
    ask.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ask.add_argument("--frames", type=int, default=32)
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--device", default="auto")
    ask.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="auto: bfloat16 on CUDA, float32 on CPU"
    )
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(func=cmd_ask)

    sweep = sub.add_parser("sweep", help="run a YAML sweep config through lmms-eval (resumable)")
    sweep.add_argument("config")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.add_argument(
        "--stale-after", type=float, default=600.0, metavar="SECONDS",
        help="a cell claim whose heartbeat is older than this belongs to a dead worker and is taken over (default 600)",
    )
    sweep.add_argument(
        "--slurm", metavar="KEY=VALUE,...",
        help="submit workers through submitit instead of running here, e.g. partition=gpu,gpus_per_task=1,array=8",
    )
    sweep.add_argument(
        "--timing-pass", type=int, metavar="N",
        help="latency/memory rows: every cell on its first N samples in this one process, into <name>_timing/",
    )
    sweep.add_argument("--dry-run", action="store_true", help="with --slurm: print the sbatch script, submit nothing")
    sweep.add_argument(
        "--submitit-cluster", choices=["slurm", "local", "debug"], default="slurm",
        help="with --slurm: submitit's local or debug executor runs the same workers on this machine (no SLURM needed)",
    )
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="rebuild the leaderboard files of a sweep")
    report.add_argument("config")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # MethodError, ConfigError, VideoError are ValueErrors
        parser.exit(2, f"tokbench: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
