"""Benchmark: HoliTom's outer stage (``tokbench.methods.holitom.outer_stage``) against the official loop
structure.

The reference below is a plain re-implementation, written for this benchmark, of how the
official code (cokeshao/HoliTom ``holitom/llava_arch.py``, commit e9b2972) is organised:
a loop of cumulative products per start frame for the window gains (55-67), a double Python
loop with tensor scalars for the DP (69-98), a loop over windows for the split, with the
positions it carries (278-311), ``isin`` plus a Python loop over clusters for the merge into
centres (100-150), a mask plus ``masked_select`` and a per-frame concatenation for the
attention selection (152-197), the centres' positions gathered per batch row (199-213), in
the grid layout the sort and the per-frame, per-row newline loop (216-275), and
``F.normalize`` + ``F.cosine_similarity`` for the frame similarity (377-380); and, for the
inner stage at layer K (``holitom/modeling_qwen2.py`` 144-208), the per-token Python loop
that averages each dropped token into its most similar kept token in place, one token at a
time. The inner stage runs on the outer stage's output (the visual tokens the LLM receives
stand in for the layer-K hidden states; the loop's cost does not depend on their values)
with a seeded random attention score per token. Both sides draw the density noise from
generators seeded alike, so their outputs must agree: the script asserts the same windows,
the same ``> tau`` decisions, token count and tokens (within 1e-6, in both the one_token
and the grid layout; it also reports whether they are bit-identical), then times the two
alternately (so both see the same machine load) per stage and whole, prints the median
times, the ratio of medians and the ratio of minima, and writes them as JSON to ``--out``.

Run: ``.venv/bin/python -m benchmarks.bench_holitom --dim 896 3584 --frames 32 --out bench.json``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tokbench.methods import holitom as ht

GRID = 14


# ---------------------------------------------------------------------------------------
# Synthetic video: scenes with a static background, moving blobs, per-frame noise
# ---------------------------------------------------------------------------------------


def synthetic_video(frames: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features [T, 196, D] and encoder attention [T, 196] with 3 scenes and 3 moving blobs."""
    gen = torch.Generator().manual_seed(seed)
    tokens = GRID * GRID
    mean_dir = torch.randn(dim, generator=gen)
    scenes = torch.randn(3, tokens, dim, generator=gen)
    scene_of = (torch.arange(frames) * 3) // frames
    features = mean_dir + scenes[scene_of] + 0.25 * torch.randn(frames, tokens, dim, generator=gen)
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    blob_weight = torch.zeros(frames, tokens)
    for _ in range(3):
        vector = 3.0 * torch.randn(dim, generator=gen)
        start, velocity = torch.rand(2, generator=gen) * GRID, torch.randn(2, generator=gen) * 0.4
        for t in range(frames):
            centre = (start + velocity * t) % GRID
            dist2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
            weight = torch.exp(-dist2 / 4.0).reshape(-1)
            features[t] += weight[:, None] * vector
            blob_weight[t] = torch.maximum(blob_weight[t], weight)
    attention = torch.softmax(0.7 * torch.randn(frames, tokens, generator=gen) + 2.5 * blob_weight, dim=-1)
    return features, attention


# ---------------------------------------------------------------------------------------
# Reference: the official loop structure
# ---------------------------------------------------------------------------------------


def reference_similarity(features: torch.Tensor) -> torch.Tensor:
    """``llava_arch.py`` 377-380 in op order: normalise, then cosine similarity of frames t and t+1."""
    normed = F.normalize(features, p=2, dim=-1)
    return F.cosine_similarity(normed[:-1], normed[1:], dim=-1)


def loop_gain_matrix(similarity: torch.Tensor, frames: int, tau: float) -> torch.Tensor:
    table = torch.ones(frames, frames, similarity.shape[1])
    for start in range(frames - 1):
        running = torch.cumprod(similarity[start:] > tau, dim=0)
        table[start, start + 1 : start + 1 + running.shape[0]] = running
    steps = torch.arange(frames)
    lengths = (steps[None, :] - steps[:, None]).clamp(min=0)
    return (table.sum(dim=-1) * lengths).float()


def loop_windows(
    similarity: torch.Tensor, frames: int, tau: float, max_window: int
) -> tuple[list[tuple[int, int]], float]:
    gain = loop_gain_matrix(similarity, frames, tau)
    dp = torch.zeros(frames)
    back = torch.zeros(frames, dtype=torch.long)
    for i in range(frames):
        best = dp[i - 1] if i > 0 else 0
        start = i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0) + gain[j + 1, i]
            if value > best:
                best, start = value, j + 1
        dp[i] = best
        back[i] = start
    windows = []
    i = frames - 1
    while i >= 0:
        windows.append((int(back[i].item()), i))
        i = int(back[i].item()) - 1
    return windows[::-1], dp[-1].item()


def loop_dpc(x: torch.Tensor, clusters: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    dist = torch.cdist(x.float(), x.float()) / (x.shape[-1] ** 0.5)
    nearest, _ = torch.topk(dist, k, dim=-1, largest=False)
    density = (-(nearest**2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, generator=generator) * 1e-6
    denser = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    far = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta, _ = (dist * denser + far * (1 - denser)).min(dim=-1)
    _, centres = (delta * density).topk(clusters, dim=-1)
    return centres, dist


def loop_merge_clusters(
    feat: torch.Tensor, centres: torch.Tensor, dist: torch.Tensor, clusters: int, beta: float
) -> torch.Tensor:
    batch, count, dim = feat.shape
    every = torch.arange(count).unsqueeze(0).expand(batch, -1)
    others = torch.zeros(batch, count - clusters, dtype=torch.long)
    for b in range(batch):
        others[b] = every[b][~torch.isin(every[b], centres[b])]
    other_feat = torch.gather(feat, 1, others.unsqueeze(-1).expand(-1, -1, dim))
    d = torch.gather(dist, 1, others.unsqueeze(-1).expand(-1, -1, dist.shape[-1]))
    d = torch.gather(d, 2, centres.unsqueeze(1).expand(-1, d.shape[1], -1))
    owner = torch.argmin(d, dim=-1)
    result = []
    for b in range(batch):
        tokens = []
        for i in range(clusters):
            members = owner[b] == i
            if members.any():
                tokens.append(beta * feat[b][centres[b][i]] + (1 - beta) * other_feat[b][members].mean(dim=0))
            else:
                tokens.append(feat[b][centres[b][i]])
        result.append(torch.stack(tokens))
    return torch.stack(result)


def loop_attention_select(
    feat: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    frames, count, dim = feat.shape
    keep = math.ceil(count * ratio)  # dominant tokens; D = 0 leaves no contextual ones
    if keep > 0:
        top = attn.topk(keep, dim=1).indices
        dropped = torch.ones_like(feat[:, :, 0], dtype=torch.bool).scatter_(1, top, False)
        kept = feat.masked_select(~dropped.unsqueeze(-1)).view(frames, keep, dim)
        kept_pos = pos.masked_select(~dropped).view(frames, keep)
    else:
        kept, kept_pos = torch.empty((frames, 0, dim)), torch.empty((frames, 0))
    context, context_pos = torch.empty((frames, 0, dim)), torch.empty((frames, 0))
    tokens, positions = [], []
    for b in range(frames):
        tokens.append(torch.cat([kept[b], context[b]], dim=0))
        positions.append(torch.cat([kept_pos[b], context_pos[b]], dim=0))
    return torch.stack(tokens), torch.stack(positions)


def loop_static_merge(
    feat: torch.Tensor, pos: torch.Tensor, ratio: float, beta: float, knn: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    clusters = round(feat.shape[1] * ratio)
    if clusters == 0:
        return torch.empty((feat.shape[0], 0, feat.shape[2])), torch.empty((feat.shape[0], 0))
    centres, dist = loop_dpc(feat, clusters, min(knn, clusters), generator)
    centres = torch.sort(centres, dim=-1)[0]
    centre_pos = torch.stack([pos[b][centres[b]] for b in range(feat.shape[0])])
    return loop_merge_clusters(feat, centres, dist, clusters, beta), centre_pos


def loop_add_newlines(feat: torch.Tensor, pos: torch.Tensor, grid: int, newline: torch.Tensor) -> torch.Tensor:
    rows_of = pos // grid
    frames = []
    for frame_feat, frame_rows in zip(feat, rows_of):
        rows = []
        for row in range(grid):
            found = frame_feat[frame_rows == row]
            rows.append(torch.cat((found, newline)) if len(found) > 0 else found)
        frames.append(torch.cat(rows))
    return torch.cat(frames)


def loop_sorted(feat: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos, order = torch.sort(pos, dim=1)
    return torch.gather(feat, 1, order.unsqueeze(-1).expand(-1, -1, feat.shape[-1])), pos


def loop_window_tokens(
    static_feat: torch.Tensor,
    static_pos: torch.Tensor,
    dyn_feat: torch.Tensor,
    dyn_pos: torch.Tensor,
    single_frame: bool,
    newline: torch.Tensor | None,
    grid: int,
) -> torch.Tensor:
    """The end of ``holitom()``: one_token order, or the grid layout with row newlines."""
    if newline is None:
        return torch.cat([static_feat.flatten(0, 1), dyn_feat.flatten(0, 1)])
    if single_frame:
        return loop_add_newlines(*loop_sorted(dyn_feat, dyn_pos), grid, newline)
    first_feat = torch.cat([static_feat, dyn_feat[0:1]], dim=1)
    first_pos = torch.cat([static_pos, dyn_pos[0:1]], dim=1)
    first = loop_add_newlines(*loop_sorted(first_feat, first_pos), grid, newline)
    others = loop_add_newlines(*loop_sorted(dyn_feat[1:], dyn_pos[1:]), grid, newline)
    return torch.cat([first, others])


def loop_outer(
    features: torch.Tensor,
    attention: torch.Tensor,
    retain: float,
    tau: float,
    max_window: int,
    seed: int,
    newline: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(seed)
    frames, count, dim = features.shape
    grid = int(math.sqrt(count))
    similarity = reference_similarity(features)
    windows, reduced = loop_windows(similarity, frames, tau, max_window)
    total = frames * count
    ratio = min(retain / ((total - reduced) / total), 1)
    segments = []
    for start, end in windows:
        every = torch.arange(count).unsqueeze(0)
        if start == end:
            dyn_feat, dyn_pos = loop_attention_select(
                features[start : end + 1], attention[start : end + 1], every, ratio
            )
            static_feat, static_pos = torch.empty((1, 0, dim)), torch.empty((0, count))
        else:
            static = torch.all(similarity[start:end] > tau, dim=0)
            dyn_feat, dyn_pos = loop_attention_select(
                features[start : end + 1, ~static],
                attention[start : end + 1, ~static],
                every[:, ~static].expand(end - start + 1, -1),
                ratio,
            )
            static_feat, static_pos = loop_static_merge(
                features[start : end + 1, static].mean(dim=0).unsqueeze(0),
                every[:, static].expand(1, -1),
                ratio,
                0.6,
                7,
                generator,
            )
        segments.append(loop_window_tokens(static_feat, static_pos, dyn_feat, dyn_pos, start == end, newline, grid))
    return torch.cat(segments), windows


def loop_inner(hidden: torch.Tensor, scores: torch.Tensor, prune_ratio: float) -> torch.Tensor:
    """Kept visual tokens [B, n_keep, D] (ascending position) after the official per-token merge."""
    hidden = hidden.clone()
    length = hidden.shape[1]
    top = scores.topk(round(length * (1 - prune_ratio))).indices
    every = torch.arange(length)
    others = every[~torch.isin(every, top)]
    other_states, top_states = hidden[:, others, :], hidden[:, top, :]
    dot = torch.bmm(other_states, top_states.transpose(1, 2))
    sim = dot / (torch.norm(other_states, dim=-1, keepdim=True) * torch.norm(top_states, dim=-1, keepdim=True).transpose(1, 2))
    best = torch.max(sim, dim=-1).indices
    for b in range(hidden.shape[0]):
        for i in range(len(others)):
            into = top[best[b, i]]
            hidden[b, into, :] = (hidden[b, into, :] + hidden[b, others[i], :]) / 2
    return hidden[:, top.sort().values, :]


# ---------------------------------------------------------------------------------------
# Timing and comparison
# ---------------------------------------------------------------------------------------


def ours(
    features: torch.Tensor,
    attention: torch.Tensor,
    retain: float,
    tau: float,
    max_window: int,
    seed: int,
    newline: torch.Tensor | None = None,
) -> ht.OuterResult:
    return ht.outer_stage(
        features,
        attention,
        retain,
        tau,
        max_window=max_window,
        noise=torch.Generator().manual_seed(seed),
        newline=newline,
    )


def interleaved_times(
    reference: Callable[[], object], fast: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall times of both, run alternately (after one warm-up each) so both see the same machine load."""
    reference()
    fast()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((reference, times[0]), (fast, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return times


def clustering_inputs(
    features: torch.Tensor, result: ht.OuterResult, tau: float, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(static tokens, sorted centres, distances) of every clustered window, as the outer stage saw them."""
    generator = torch.Generator().manual_seed(seed)
    parts = ht.split_static_dynamic(features, torch.zeros(features.shape[:2]), result.windows, result.feature_sim, tau)
    out = []
    for part in parts:
        static = part.static_feat[None]
        clusters = round(static.shape[1] * result.retain_adjusted)
        if part.size > 1 and clusters > 0:
            dpc = ht.cluster_dpc_knn(static, clusters, min(7, clusters), generator)
            out.append((static, dpc.centres.sort(dim=-1).values, dpc.dist_matrix))
    return out


def shared_work_ms(features: torch.Tensor, windows: list[tuple[int, int]], merges: list, repeats: int) -> float:
    """Median time of work both sides must do: one read of the features, the window means, the cdists."""

    def work() -> None:
        torch.linalg.vector_norm(features, 2, dim=-1)
        for start, end in windows:
            if end > start:
                features[start : end + 1].mean(dim=0)
        for static, _, _ in merges:
            torch.cdist(static, static)

    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def stage_row(name: str, reference: Callable[[], object], fast: Callable[[], object], repeats: int) -> dict:
    reference_t, fast_t = interleaved_times(reference, fast, repeats)
    return {
        "stage": name,
        "official_loop_ms": statistics.median(reference_t) * 1e3,
        "ours_ms": statistics.median(fast_t) * 1e3,
        "speedup": statistics.median(reference_t) / statistics.median(fast_t),
        "official_loop_min_ms": min(reference_t) * 1e3,
        "ours_min_ms": min(fast_t) * 1e3,
        "speedup_of_minima": min(reference_t) / min(fast_t),
    }


def run_case(dim: int, frames: int, retain: float, tau: float, max_window: int, repeats: int, seed: int) -> dict:
    features, attention = synthetic_video(frames, dim, seed)
    reference, ref_windows = loop_outer(features, attention, retain, tau, max_window, seed)
    result = ours(features, attention, retain, tau, max_window, seed)
    assert result.windows == ref_windows, f"windows differ: {result.windows} vs {ref_windows}"
    assert result.tokens.shape == reference.shape, (
        f"token counts differ: {tuple(result.tokens.shape)} vs {tuple(reference.shape)}"
    )
    max_diff = float((result.tokens - reference).abs().max())
    assert max_diff <= 1e-6, f"tokens differ by {max_diff}"
    newline = torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1))
    grid_reference, _ = loop_outer(features, attention, retain, tau, max_window, seed, newline[None])
    grid_result = ours(features, attention, retain, tau, max_window, seed, newline)
    assert grid_result.tokens.shape == grid_reference.shape, "grid layouts differ in length"
    grid_diff = float((grid_result.tokens - grid_reference).abs().max())
    assert grid_diff <= 1e-6, f"grid-layout tokens differ by {grid_diff}"

    similarity, official_similarity = result.feature_sim, reference_similarity(features)
    assert torch.equal(similarity > tau, official_similarity > tau), "static/dynamic decisions differ"
    similarity_diff = float((similarity - official_similarity).abs().max())
    assert ht.select_static_windows(similarity, frames, tau, max_window) == loop_windows(
        similarity, frames, tau, max_window
    )
    merges = clustering_inputs(features, result, tau, seed)
    for static, centres, dist in merges:
        merged, _ = ht.merge_into_centres(static, centres, dist, 0.6)
        assert (merged - loop_merge_clusters(static, centres, dist, centres.shape[1], 0.6)).abs().max() <= 1e-6

    hidden = result.tokens[None]
    scores = torch.softmax(torch.randn(hidden.shape[1], generator=torch.Generator().manual_seed(seed)), dim=0)
    inner_diff = float((ht.inner_merge(hidden, scores, 0.5).hidden - loop_inner(hidden, scores, 0.5)).abs().max())
    assert inner_diff <= 1e-4 * float(hidden.abs().max()), f"inner merge differs by {inner_diff}"

    stages = [
        stage_row(
            "frame similarity", lambda: reference_similarity(features), lambda: ht.frame_similarity(features, tau), repeats
        ),
        stage_row(
            "DP windows",
            lambda: loop_windows(similarity, frames, tau, max_window),
            lambda: ht.select_static_windows(similarity, frames, tau, max_window),
            repeats,
        ),
        stage_row(
            "merge into centres",
            lambda: [loop_merge_clusters(x, c, d, c.shape[1], 0.6) for x, c, d in merges],
            lambda: [ht.merge_into_centres(x, c, d, 0.6) for x, c, d in merges],
            repeats,
        ),
        stage_row(
            "whole outer stage",
            lambda: loop_outer(features, attention, retain, tau, max_window, seed),
            lambda: ours(features, attention, retain, tau, max_window, seed),
            repeats,
        ),
        stage_row(
            "outer, grid layout",
            lambda: loop_outer(features, attention, retain, tau, max_window, seed, newline[None]),
            lambda: ours(features, attention, retain, tau, max_window, seed, newline),
            repeats,
        ),
        stage_row(
            "inner merge (r=0.5)",
            lambda: loop_inner(hidden, scores, 0.5),
            lambda: ht.inner_merge(hidden, scores, 0.5),
            repeats,
        ),
        stage_row(
            "outer + inner",
            lambda: loop_inner(loop_outer(features, attention, retain, tau, max_window, seed)[0][None], scores, 0.5),
            lambda: ht.inner_merge(ours(features, attention, retain, tau, max_window, seed).tokens[None], scores, 0.5),
            repeats,
        ),
    ]
    whole = next(row for row in stages if row["stage"] == "whole outer stage")
    shared_ms = shared_work_ms(features, result.windows, merges, repeats)
    return {
        "dim": dim,
        "frames": frames,
        "retain": retain,
        "tau": tau,
        "windows": len(result.windows),
        "clusters": sum(int(c.shape[1]) for _, c, _ in merges),
        "tokens": int(result.tokens.shape[0]),
        "max_abs_diff": max_diff,
        "similarity_max_abs_diff": similarity_diff,
        "grid_tokens": int(grid_result.tokens.shape[0]),
        "grid_max_abs_diff": grid_diff,
        "inner_max_abs_diff": inner_diff,
        "bit_identical": bool(torch.equal(result.tokens, reference)),
        "stages": stages,
        "shared_work_ms": shared_ms,
        "ceiling_ratio": whole["official_loop_ms"] / shared_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, nargs="+", default=[896, 3584], help="feature sizes D to run")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--retain", type=float, default=0.10)
    parser.add_argument("--tau", type=float, default=None, help="default: 0.65 if retain <= 0.10 else 0.80")
    parser.add_argument("--max-window", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tau = ht.default_tau(args.retain) if args.tau is None else args.tau
    rows = [run_case(d, args.frames, args.retain, tau, args.max_window, args.repeats, args.seed) for d in args.dim]
    print(f"{'D':>6} {'stage':<20} {'official loop ms':>17} {'ours ms':>9} {'ratio':>8} {'ratio of minima':>16}")
    for r in rows:
        for st in r["stages"]:
            print(
                f"{r['dim']:>6} {st['stage']:<20} {st['official_loop_ms']:>17.2f} {st['ours_ms']:>9.2f} "
                f"{st['speedup']:>7.1f}x {st['speedup_of_minima']:>15.1f}x"
            )
        print(
            f"{r['dim']:>6} windows={r['windows']} clusters={r['clusters']} tokens={r['tokens']} "
            f"max|diff|={r['max_abs_diff']:.1e} bit-identical={r['bit_identical']} "
            f"grid tokens={r['grid_tokens']} max|similarity diff|={r['similarity_max_abs_diff']:.1e}"
        )
        print(
            f"{r['dim']:>6} shared work (one feature read, window means, cdists) {r['shared_work_ms']:.2f} ms: "
            f"bounds the ratio of identical-output implementations at {r['ceiling_ratio']:.1f}x"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
