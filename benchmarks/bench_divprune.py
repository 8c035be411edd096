"""Benchmark: DivPrune selection, ours (one pass + O(M*N) loop) vs the official O(M^2 N) loop.

Tokens: N = ``--frames`` x 196 pooled tokens (default 32 x 196 = 6272) at each width in
``--dims`` (default 896 and 3584: LLaVA-OV 0.5B and 7B), keeping ``--retain`` (10%).
Synthetic features: a shared mean direction (anisotropic, like projector outputs) plus smooth
per-frame fields and noise.

Measured (best of ``--repeats`` interleaved rounds, ``--threads`` threads):

* ``matmul``: the one N x N similarity matmul that an exact DivPrune needs (the floor);
* ``official loop``: a straight re-implementation, in this file, of the released loop
  (``LLaVA/llava/model/llava_arch.py`` 152-171): ``C = 1 - S``, top-2 over every column, then
  for step i a re-gather of the i selected rows and a column minimum: O(M^2 N);
* ``our loop``: ``tokbench.methods.divprune.greedy_max_min`` on the same similarity matrix;
* ``our call``: ``tokbench.methods.divprune.divprune_select`` end to end (normalise, matmul, select).

Checks: identical selections, in the same order. Reports (a) official loop / our loop
(target >= 10x) and (b) our call / matmul (target <= 1.2x). Prints a table; writes JSON to
``--out``. Run from the repository root: ``python -m benchmarks.bench_divprune --out b.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokbench.methods.divprune import (
    cosine_similarity_matrix,
    divprune_select,
    greedy_max_min,
)
from tokbench.methods.base import l2_normalize

TOKENS_PER_FRAME = 196


def synthetic_features(frames: int, dim: int, seed: int) -> torch.Tensor:
    """[frames * 196, dim] pooled-video-like features."""
    gen = torch.Generator().manual_seed(seed)
    side = 14
    mean = 3.0 * torch.randn(dim, generator=gen)
    basis = torch.randn(16, dim, generator=gen)
    field = torch.randn(frames, 16, 4, 4, generator=gen)
    field = torch.nn.functional.interpolate(field, size=(side, side), mode="bilinear", align_corners=False)
    smooth = field.permute(0, 2, 3, 1).reshape(-1, 16) @ basis
    return mean + smooth + torch.randn(frames * side * side, dim, generator=gen)


def official_loop(sim: torch.Tensor, k: int) -> torch.Tensor:
    """The released selection loop on a precomputed similarity matrix (distance ``1 - S``)."""
    dist = 1.0 - sim
    picked = torch.empty(k, dtype=torch.long)
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            rows = torch.index_select(dist, 0, torch.index_select(picked, 0, torch.arange(0, i)))
            scores = torch.min(rows, dim=0).values
        picked[i] = torch.argmax(scores)
    return picked


def best_times(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Best wall time of each function over ``repeats`` rounds, the functions interleaved
    within each round so that a change in machine load hits all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return outs, best


def bench_width(x: torch.Tensor, k: int, repeats: int) -> dict[str, Any]:
    xn = l2_normalize(x)
    sim = torch.mm(xn, xn.t())
    assert torch.equal(cosine_similarity_matrix(x), sim)
    outs, seconds = best_times(
        {
            "matmul": lambda: torch.mm(xn, xn.t()),
            "official_loop": lambda: official_loop(sim, k),
            "our_loop": lambda: greedy_max_min(sim.unsqueeze(0), k)[0],
            "our_call": lambda: divprune_select(x, k),
        },
        repeats,
    )
    identical = torch.equal(outs["our_loop"], outs["official_loop"]) and torch.equal(
        outs["our_call"], outs["official_loop"]
    )
    return {
        "n": x.shape[0],
        "dim": x.shape[1],
        "k": k,
        "seconds": seconds,
        "loop_speedup": seconds["official_loop"] / seconds["our_loop"],
        "call_over_matmul": seconds["our_call"] / seconds["matmul"],
        "identical_selection": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--dims", type=int, nargs="+", default=[896, 3584])
    parser.add_argument("--retain", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for dim in args.dims:
        x = synthetic_features(args.frames, dim, args.seed)
        rows.append(bench_width(x, round(args.retain * x.shape[0]), args.repeats))
    print(f"N = {rows[0]['n']}, keep {rows[0]['k']}, {args.threads} threads, best of {args.repeats}")
    print(
        f"{'D':>6}{'matmul s':>10}{'official loop s':>17}{'our loop s':>12}{'our call s':>12}{'loop x':>9}{'call/mm':>9}"
    )
    for r in rows:
        s = r["seconds"]
        print(
            f"{r['dim']:>6}{s['matmul']:>10.3f}{s['official_loop']:>17.3f}{s['our_loop']:>12.4f}"
            f"{s['our_call']:>12.3f}{r['loop_speedup']:>9.1f}{r['call_over_matmul']:>9.2f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    assert all(r["identical_selection"] for r in rows), "selections differ from the official loop"


if __name__ == "__main__":
    main()
