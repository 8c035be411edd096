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

from methods.base import MethodError


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

    from methods.registry import available

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
    from harness.flops import paper_flops, resolve_dims
    from methods.registry import build_reducer

    dims = resolve_dims(args.model)
    result = paper_flops(build_reducer(args.method, parse_params(args.param)), dims, args.frames)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    stages = " + ".join(f"{s['layers']}x{s['tokens']}" for s in result["schedule"])
    print(published_style(result["paper_tflops"]))
    print(
        f"# {args.method} on {dims.name}, {args.frames} frames: {result['visual_tokens_full']} visual tokens; "
        f"schedule (layers x tokens) {stages}; {result['percent_of_full']:.1f}% of full (paper convention)",
        file=sys.stderr,
    )


def cmd_ask(args: argparse.Namespace) -> None:
    from harness.models.llava_onevision import LlavaOnevisionAdapter
    from harness.runner import Runner, measure_prefill_flops
    from harness.video import read_clip
    from methods.registry import build_reducer

    reducer = build_reducer(args.method, parse_params(args.param))
    clip = read_clip(args.video, args.frames)  # decoded once; a bad video fails before the model loads
    if Path(args.model).is_dir():  # so does a checkpoint the method cannot serve (the runner checks hub ids)
        reducer.check_checkpoint(args.model)
    adapter = LlavaOnevisionAdapter(args.model, device=args.device, dtype=args.dtype)
    runner = Runner(adapter, reducer, args.frames)
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
    from harness.config import load_config
    from harness.sweep import run_sweep

    config = load_config(args.config)
    rows = run_sweep(config, progress=not args.quiet)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"{len(rows)} rows in {config.results_dir / 'leaderboard.csv'} ({len(failed)} failed cells)")


def cmd_report(args: argparse.Namespace) -> None:
    from harness.config import load_config
    from harness.report import write_reports

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
    flops.add_argument("--model", required=True, help="llava-ov-0.5b | llava-ov-7b | llava-ov-72b | llava-video-7b | config.json")
    flops.add_argument("--frames", type=int, default=32)
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
