"""Benchmark: VQToken's adaptive-K sweep, batched (ours) vs sequential fits.

Tokens: ``--frames`` x ``--tokens`` un-pooled tokens of width ``--dim`` (default 32 x 729,
D=896, the LLaVA-OV-0.5B setting), synthetic: soft mixtures of object directions laid out by
smooth per-frame fields, plus noise, L2-normalised. Candidates K = k_min..k_max (12..32).

Three runs of the whole sweep (every candidate K fitted to convergence):

* ``official``: a straight re-implementation, in this file, of the released loop structure
  (``VQToken/cluster.py`` 7-74, 111-132): K-by-K, k-means++ with a full ``cdist`` to every
  chosen seed per step, per-cluster boolean-mask means, X re-normalised every iteration;
* ``sequential``: ``tokbench.methods.kmeans.kmeans`` called once per K with the official run's seeds;
* ``batched``: ``tokbench.methods.kmeans.kmeans_sweep`` with the same seeds, and once more drawing its
  own seeds (its k-means++ is batched too), which is the time the method really spends.

Checks: batched == sequential exactly (labels, centroids, iterations); batched total
within-cluster error (sum over K of sum ||x - c||^2) no worse than the official run's with the
same seeds (it is the same clustering up to float rounding). Reports the time ratios
(target: official / batched >= 5x). Prints a table; writes JSON to ``--out``.

Run from the repository root: ``python -m benchmarks.bench_vqtoken --out bench.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tokbench.methods.base import l2_normalize
from tokbench.methods.kmeans import (
    KMeansFit,
    kmeans,
    kmeans_sweep,
    seeded_generator,
)

ERROR_RTOL = 1e-5


def synthetic_tokens(frames: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    """[frames * tokens, dim] unit tokens: soft mixtures of object directions laid out by
    smooth per-frame fields, plus noise (k-means needs 10-40 iterations, like real features)."""
    gen = seeded_generator(seed)
    side = round(tokens**0.5)
    objects = 32
    directions = torch.randn(objects, dim, generator=gen)
    field = torch.randn(frames, objects, 4, 4, generator=gen)
    field = torch.nn.functional.interpolate(field, size=(side, side), mode="bilinear", align_corners=False)
    weights = torch.softmax(3 * field, dim=1).permute(0, 2, 3, 1).reshape(frames, side * side, objects)
    mixed = (weights[:, :tokens] @ directions).reshape(frames * tokens, dim)
    return l2_normalize(mixed + 0.3 * torch.randn(frames * tokens, dim, generator=gen))


class OfficialStructureKMeans:
    """The released ``KMeansTorch`` loop structure, for timing only (seeded generator)."""

    def __init__(self, k: int, max_iter: int, tol: float, generator: torch.Generator):
        self.k, self.max_iter, self.tol, self.generator = k, max_iter, tol, generator

    def seeds(self, x: torch.Tensor) -> list[int]:
        chosen = [int(torch.randint(0, x.shape[0], (1,), generator=self.generator))]
        for _ in range(1, self.k):
            dists = torch.cdist(x, x[chosen], p=2).min(dim=1)[0]
            weights = dists.pow(2).clamp(min=0.0) + 1e-6
            chosen.append(int(torch.multinomial(weights / weights.sum(), 1, generator=self.generator)))
        return chosen

    def fit(self, x: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor, int]:
        seeds = self.seeds(x)
        centroids = x[seeds]
        n_iter = 0
        for _ in range(self.max_iter):
            xn = x / x.norm(dim=-1, keepdim=True)
            cn = centroids / centroids.norm(dim=-1, keepdim=True)
            labels = torch.argmin(1 - torch.mm(xn, cn.T), dim=1)
            means = [centroids[i] if not (labels == i).any() else x[labels == i].mean(dim=0) for i in range(self.k)]
            updated = torch.stack(means)
            n_iter += 1
            if torch.norm(centroids - updated) < self.tol:
                break
            centroids = updated
        return seeds, labels, centroids, n_iter


def within_error(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(((x - centroids[labels]) ** 2).sum(dtype=torch.float64))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_official(x: torch.Tensor, ks: Sequence[int], max_iter: int, tol: float, seed: int) -> list[tuple]:
    gen = seeded_generator(seed)
    return [OfficialStructureKMeans(k, max_iter, tol, gen).fit(x) for k in ks]


def same_fits(a: Sequence[KMeansFit], b: Sequence[KMeansFit]) -> bool:
    return all(
        torch.equal(p.labels, q.labels) and torch.equal(p.centroids, q.centroids) and p.n_iter == q.n_iter
        for p, q in zip(a, b)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=729)
    parser.add_argument("--dim", type=int, default=896)
    parser.add_argument("--k-min", type=int, default=12)
    parser.add_argument("--k-max", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = synthetic_tokens(args.frames, args.tokens, args.dim, args.seed)
    ks = list(range(args.k_min, args.k_max + 1))
    sweep = {"max_iter": args.max_iter, "tol": args.tol}

    official, t_official = timed(lambda: run_official(x, ks, args.max_iter, args.tol, args.seed))
    seeds = [torch.tensor(run[0]) for run in official]
    sequential, t_sequential = timed(lambda: [kmeans(x, k, init_indices=s, **sweep) for k, s in zip(ks, seeds)])
    batched, t_batched = timed(lambda: kmeans_sweep(x, ks, init_indices=seeds, **sweep))
    own, t_own = timed(lambda: kmeans_sweep(x, ks, generator=seeded_generator(args.seed), **sweep))

    err_official = sum(within_error(x, labels, c) for _, labels, c, _ in official)
    err_batched = sum(within_error(x, f.labels, f.centroids) for f in batched)
    err_own = sum(within_error(x, f.labels, f.centroids) for f in own)
    agree = sum(int((f.labels == run[1]).sum()) for f, run in zip(batched, official)) / (len(ks) * x.shape[0])
    result = {
        "tokens": list(x.shape),
        "candidates": [ks[0], ks[-1]],
        "threads": args.threads,
        "seconds": {
            "official": t_official,
            "sequential": t_sequential,
            "batched": t_batched,
            "batched_own_seeds": t_own,
        },
        "ratio_official_over_batched_own_seeds": t_official / t_own,
        "ratio_official_over_batched_same_seeds": t_official / t_batched,
        "ratio_sequential_over_batched": t_sequential / t_batched,
        "within_error": {"official": err_official, "batched_same_seeds": err_batched, "batched_own_seeds": err_own},
        "label_agreement_with_official": agree,
        "iterations": {"official": [run[3] for run in official], "batched": [f.n_iter for f in batched]},
        "batched_equals_sequential": same_fits(batched, sequential),
    }
    print(f"tokens {x.shape[0]} x {x.shape[1]}, K {ks[0]}..{ks[-1]}, {args.threads} threads")
    print(f"{'run':<26}{'seconds':>10}{'within error':>16}")
    print(f"{'official structure':<26}{t_official:>10.2f}{err_official:>16.3f}")
    print(f"{'sequential (same seeds)':<26}{t_sequential:>10.2f}{'':>16}")
    print(f"{'batched (same seeds)':<26}{t_batched:>10.2f}{err_batched:>16.3f}")
    print(f"{'batched (own seeds)':<26}{t_own:>10.2f}{err_own:>16.3f}")
    print(f"official / batched (own seeds): {result['ratio_official_over_batched_own_seeds']:.1f}x")
    print(f"sequential / batched (same seeds): {result['ratio_sequential_over_batched']:.1f}x")
    print(f"label agreement with official: {agree:.4%}; batched == sequential: {result['batched_equals_sequential']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    assert result["batched_equals_sequential"], "batched sweep differs from sequential fits"
    assert err_batched <= err_official * (1 + ERROR_RTOL), "batched within-cluster error is worse"


if __name__ == "__main__":
    main()
