"""HoliTom (Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language
Models", NeurIPS 2025).

Official code: cokeshao/HoliTom, commit e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0.

* Outer stage (before the LLM), ``holitom/llava_arch.py``:
  ``cluster_dpc_knn`` 29-51, ``select_static_windows`` 53-98 (gain matrix 55-67),
  ``merge_tokens_by_clustering`` 100-150, ``merge_tokens_by_attention_density`` 152-197,
  ``merge_tokens_by_density`` 199-213, ``add_newline_token`` 216-231, ``holitom`` 234-275,
  ``get_static_dynamic_features`` 278-311, env defaults 348-356, pipeline 365-407
  (pooling 370-373, frame similarity 377-380).
* Pooling and encoder score: LLaVA-NeXT ``llava/model/llava_arch.py`` 171-190 (``get_2dPool``,
  bilinear mode) and ``multimodal_encoder/siglip_encoder.py`` 595, 618-622.
* Inner stage (in the LLM), ``holitom/modeling_qwen2.py`` 144-208 (the ``HOLITOM_k`` branch;
  default k at line 121).

The pipeline: cosine similarity of each grid position between consecutive frames; a dynamic
programme splits the video into contiguous windows maximising the tokens removed by
averaging each window's static positions (similarity > tau at every step); the retain ratio
is rescaled for what that removed; per window the static positions are averaged over the
window's frames and clustered by DPC-kNN (members merged into their centre as
0.6 * centre + 0.4 * mean(members)), the dynamic positions keep, per frame, the
ceil(n * r') tokens the vision encoder attends to most. Inside the LLM, at layer K the
last query's attention keeps round(L * (1 - r)) visual tokens and every dropped token is
averaged into its most cosine-similar kept token.

Faithful (every public golden file matches, see ``tests/golden_checks/holitom.py``): the
strict ``>`` comparisons and tie rules of the DP, ``max_window``, the Python-float r'
rescaling, the cdist-based DPC distances (torch's mm formula, kNN including the token itself),
the 1e-6 density noise drawn once per clustered window in window order, the top-k order of
DPC centres before sorting, Python ``round`` (half to even) and ``ceil`` counts, OV
``one_token`` token order (per window: static tokens, then each frame's kept dynamic tokens
in position order) and the ``grid`` newline layout, and the inner stage's once-computed cosine
similarity with its sequential pairwise averaging (later merges weigh more).

Deliberately different:

* Speed: the gain matrix comes from one cumulative sum of "breaks" instead of a loop of
  cumulative products; the DP's inner max is vectorised; the members of every cluster are
  summed with one ``index_add_`` instead of a Python loop over clusters; the inner
  sequential averaging uses its closed form (a kept token k absorbing a_1..a_m in ascending
  order becomes k / 2^m + sum_i a_i / 2^(m-i+1)), one scatter instead of a loop over tokens;
  the frame similarity is ``dot / (|a| |b|)`` in cache-sized blocks (three passes, not six),
  and every entry within its rounding bound of ``tau`` is recomputed with the official op
  sequence, so every ``> tau`` decision is the official one (the reported similarities differ
  from the official ones by < 1e-6). Selections are identical; merged values agree up to
  float rounding (< 1e-6 here). On CUDA ``index_add_`` is deterministic only under
  ``torch.use_deterministic_algorithms(True)``.
* Precision: the reducer runs both stages in float32 and casts back to the model dtype (the
  official code computes in the model's fp16/bf16, except cdist which it runs in float32).
* Density noise: drawn from a generator seeded by the ``seed`` parameter, so runs repeat
  (the official code draws from the unseeded global RNG); ``noise=false`` turns it off.
* D (the "contextual" DPC share of the dynamic tokens) is fixed at 0, the official
  default and script setting; the official D > 0 branch crashes (line 174). ``NO_BETA`` is
  not exposed: unless that env var is set the official code runs the Beta weighting.
* Shapes: an empty static position list is an empty int64 vector (official: a (0, 196)
  float tensor) and kept dynamic positions are int64 (official: float32); values are equal.
  Newline rows use the grid's width (official: ``int(sqrt(n))``, the same on square grids).
* Inner stage: the engine computes layer K-1's last-query attention from q/k (GQA aware, any
  kernel) and passes the real visual span, instead of eager attention, hard-coded spans and
  the RoPE ``seq_len`` hack; the cosine similarity does not divide by a zero norm (no NaN);
  a span so short that round(L * (1 - r)) is 0 raises ``BudgetError``. As in the official
  code the span includes OV's video newline token, which can be dropped or merged.
* Models with the ``grid`` newline layout (LLaVA-Video as ``llava_vid`` runs it) get the
  official ``grid`` output of the outer stage (newline after each non-empty row).
* K when not given (``K=auto``): the official scripts' K for the depths they ran (18 of
  Qwen2-7B's 28 layers, 60 of Qwen2-72B's 80), otherwise round(18/28 of the LLM's depth)
  (15 of 0.5B's 24, 3 of the tiny model's 4); the row's ``method_info`` records the K used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tokbench.methods.base import (
    STAGE_BOTH,
    BudgetError,
    InLLMDecision,
    LayerView,
    MethodError,
    ParamSpec,
    ReducedTokens,
    Reducer,
    VideoTokens,
    append_newline,
    python_round,
)
from tokbench.methods.registry import register

DENSITY_NOISE_SCALE = 1e-6
"""The official density tie-breaker: ``density += torch.rand(shape) * 1e-6`` (line 38)."""

NoiseSource = torch.Generator | Iterator[torch.Tensor] | None
"""Where DPC density noise comes from: a generator (draws ``torch.rand``), an iterator of
stored uniform draws (replayed one per clustering call, in call order), or None (no noise)."""


# ---------------------------------------------------------------------------------------
# Vision-encoder side: attention score and LLaVA-OV's bilinear pooling
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Temporal stage: frame similarity and the DP segmentation
# ---------------------------------------------------------------------------------------


SIMILARITY_BLOCK_ELEMENTS = 1 << 20
"""Frames per block of the similarity passes are chosen to hold about this many elements."""

ORDINARY_NORMS = (1e-12, 1e15)
"""Feature norms in this range take the fast similarity path; the rest (zero, tiny, huge or
non-finite vectors, where the official ``eps`` clamps or float range matter) take the official one."""


def unit_vectors(features: torch.Tensor) -> torch.Tensor:
    """``F.normalize`` (eps 1e-12) followed by ``F.cosine_similarity``'s own normalisation (eps 1e-8)."""
    normed = F.normalize(features, p=2, dim=-1)
    return normed / torch.linalg.vector_norm(normed, 2, dim=-1, keepdim=True).clamp_min(1e-8)


def official_frame_similarity(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each position between frames t and t+1, bit for bit as the official code.

    ``llava_arch.py`` 377-380: ``F.cosine_similarity(normalize(P)[:-1], normalize(P)[1:])``:
    the same element-wise ops and row sums, so the same bits, but each frame is normalised
    once (not twice) and frames are processed in cache-sized blocks. Every output depends
    only on its own two rows, so it may be called on any gathered subset of pairs.
    """
    frames = features.shape[0]
    step = max(1, SIMILARITY_BLOCK_ELEMENTS // max(features[0].numel(), 1))
    blocks, previous = [], None
    for start in range(0, frames, step):
        unit = unit_vectors(features[start : start + step])
        if previous is not None:
            blocks.append((previous * unit[:1]).sum(dim=-1))
        blocks.append((unit[:-1] * unit[1:]).sum(dim=-1))
        previous = unit[-1:]
    return torch.cat(blocks)


def similarity_margin(dim: int) -> float:
    """Bound on |fast - official| similarity for D-dimensional features of ordinary norm.

    Both compute the true cosine from float32 sums of D terms whose absolute values sum to
    at most |a||b| (two norms and one dot product each; the official path also divides
    twice per element, the fast one once per entry), so each is off by at most a few
    gamma_D = D * 2^-24, the textbook bound for any summation order; 8 gamma_{D+2} + 1e-6
    covers the difference of the two with room to spare.
    """
    return 8 * (dim + 2) * 2.0**-24 + 1e-6


def frame_similarity(features: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """Cosine similarity of each position between frames t and t+1: [T, N, D] -> [T-1, N].

    Fast path: ``dot(a, b) / (|a| |b|)``, three passes over the features (norms, products,
    row sums) instead of the official six, within ``similarity_margin(D)`` of the official
    value. With ``tau``, every entry within that margin of ``tau``, and every pair with a
    vector outside ``ORDINARY_NORMS``, is recomputed with the official op sequence
    (``official_frame_similarity``), so ``similarity > tau`` is the official decision for
    every entry, and so are the windows, the static masks and the tokens kept.
    """
    frames, count, dim = features.shape
    if frames < 2:
        return features.new_empty(0, count)
    norms = features.new_empty(frames, count)
    dots = features.new_empty(frames - 1, count)
    step = max(1, SIMILARITY_BLOCK_ELEMENTS // max(features[0].numel(), 1))
    products = features.new_empty(min(step, frames - 1), count, dim)
    for start in range(0, frames - 1, step):  # each block is read from memory once, then from cache
        end = min(start + step, frames - 1)
        torch.linalg.vector_norm(features[start : end + 1], 2, dim=-1, out=norms[start : end + 1])
        torch.mul(features[start:end], features[start + 1 : end + 1], out=products[: end - start])
        torch.sum(products[: end - start], dim=-1, out=dots[start:end])
    ordinary = (norms > ORDINARY_NORMS[0]) & (norms < ORDINARY_NORMS[1])
    pair_ordinary = ordinary[:-1] & ordinary[1:]
    similarity = dots / torch.where(pair_ordinary, norms[:-1] * norms[1:], 1.0)
    recheck = ~pair_ordinary
    if tau is not None:
        recheck |= (similarity - tau).abs() <= similarity_margin(dim)
    steps, positions = recheck.nonzero(as_tuple=True)
    if steps.numel():
        pairs = torch.stack([features[steps, positions], features[steps + 1, positions]])
        similarity[steps, positions] = official_frame_similarity(pairs)[0]
    return similarity


def window_gain_matrix(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """Tokens removed by merging window [s, e]: [T-1, N] -> [T, T] float32.

    ``gain[s, e] = #{n : similarity[t, n] > tau for t = s..e-1} * (e - s)`` for e > s, else 0
    (``llava_arch.py`` 55-67). A position is static over [s, e] iff no "break" (a step at or
    below tau) lies between s and e, i.e. iff the running break count is equal at s and e.
    """
    frames = similarity.shape[0] + 1
    breaks = (similarity <= tau).to(torch.int32).cumsum(dim=0)
    breaks = torch.cat([breaks.new_zeros(1, similarity.shape[1]), breaks])  # [T, N]
    static_counts = (breaks[:, None, :] == breaks[None, :, :]).sum(dim=-1)  # [s, e]
    steps = torch.arange(frames, device=similarity.device)
    lengths = (steps[None, :] - steps[:, None]).clamp(min=0)
    return (static_counts * lengths).float()


def select_static_windows(
    similarity: torch.Tensor, num_frames: int, tau: float, max_window: int
) -> tuple[list[tuple[int, int]], float]:
    """Optimal contiguous windows (inclusive ``(start, end)``) and the tokens they remove.

    ``llava_arch.py`` 53-98: ``dp[i] = max(dp[i-1], max_{w=2..min(i+1, max_window)}
    dp[i-w] + gain[i-w+1, i])`` with ``dp[-1] = 0``. Strict ``>``: on a tie the single
    frame wins, then the shortest window. The gains are exact integers, so plain Python
    floats give the official float32 decisions; for T in the hundreds this scalar loop is
    faster than any per-frame tensor op.
    """
    gain = window_gain_matrix(similarity, tau).T.tolist()  # gain[e][s], exact integers
    best = [0.0] * (num_frames + 1)  # best[i + 1] = dp[i], best[0] = dp[-1] = 0
    window_start = list(range(num_frames))
    for end in range(num_frames):
        best[end + 1] = best[end]
        ending_here = gain[end]
        for start in range(end - 1, end - min(end + 1, max_window), -1):  # window sizes 2, 3, ...
            value = best[start] + ending_here[start]
            if value > best[end + 1]:
                best[end + 1], window_start[end] = value, start
    windows = []
    end = num_frames - 1
    while end >= 0:
        windows.append((window_start[end], end))
        end = window_start[end] - 1
    return windows[::-1], best[num_frames]


def adjusted_retain_ratio(retain: float, total_tokens: int, total_reduced: float) -> float:
    """``r' = min(r / ((total - reduced) / total), 1)`` in Python float (outer pipeline, ``llava_arch.py`` 365-407)."""
    return float(min(retain / ((total_tokens - total_reduced) / total_tokens), 1))


@dataclass
class Window:
    """One temporal window split into static and dynamic positions (``llava_arch.py`` 278-311).

    ``static_feat`` [Ns, D] is the plain mean over the window's frames; ``dynamic_feat``
    [W, Nd, D] and ``dynamic_attn`` [W, Nd] stay per frame. Positions index the frame grid.
    """

    start: int
    end: int
    static_mask: torch.Tensor
    static_feat: torch.Tensor
    static_pos: torch.Tensor
    dynamic_feat: torch.Tensor
    dynamic_attn: torch.Tensor
    dynamic_pos: torch.Tensor

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def split_static_dynamic(
    features: torch.Tensor,
    attention: torch.Tensor,
    windows: list[tuple[int, int]],
    similarity: torch.Tensor,
    tau: float,
) -> list[Window]:
    """Static/dynamic split of every window; a single-frame window is all dynamic."""
    count = features.shape[1]
    out = []
    for start, end in windows:
        if start == end:
            mask = torch.zeros(count, dtype=torch.bool, device=features.device)
        else:
            mask = (similarity[start:end] > tau).all(dim=0)
        static_pos, dynamic_pos = mask.nonzero().flatten(), (~mask).nonzero().flatten()
        frames = features[start : end + 1]
        # the mean over all positions, then the static rows: no copy, the same bits as the
        # official mean of the gathered static tokens
        mean = frames.mean(dim=0) if start < end else frames[0]
        out.append(
            Window(
                start=start,
                end=end,
                static_mask=mask,
                static_feat=mean.index_select(0, static_pos),
                static_pos=static_pos,
                dynamic_feat=frames.index_select(1, dynamic_pos),
                dynamic_attn=attention[start : end + 1].index_select(1, dynamic_pos),
                dynamic_pos=dynamic_pos,
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# Spatial stage: DPC-kNN clustering of static tokens, attention selection of dynamic ones
# ---------------------------------------------------------------------------------------


@dataclass
class DPCResult:
    """``cluster_dpc_knn`` output: centres in descending-score order (not sorted) plus internals."""

    centres: torch.Tensor  # [B, cluster_num]
    dist_matrix: torch.Tensor  # [B, n, n]
    density: torch.Tensor  # [B, n], noise included
    delta: torch.Tensor  # [B, n], distance to the nearest denser token
    score: torch.Tensor  # [B, n]


def draw_density_noise(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform draws like the official ``torch.rand(density.shape)``, from ``generator``'s device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def cluster_dpc_knn(
    x: torch.Tensor,
    cluster_num: int,
    k: int,
    noise: torch.Tensor | torch.Generator | None = None,
) -> DPCResult:
    """Density-peaks clustering with kNN density, batched: x [B, n, D] (``llava_arch.py`` 29-51).

    * ``dist = cdist(x, x) / sqrt(D)`` (torch's default mm formula, as the official code);
    * ``density = exp(-mean of the k smallest squared distances)``, the token itself included,
      plus ``noise * 1e-6`` (``noise``: uniform draws [B, n], a generator to draw them, or None);
    * ``delta_i = min(max dist of the batch, min_{j denser than i} dist_ij)``;
    * centres = top ``cluster_num`` of ``delta * density``, in top-k order.
    """
    dim = x.shape[-1]
    points = x.float()
    dist = torch.cdist(points, points) / (dim**0.5)
    nearest = dist.topk(k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    if isinstance(noise, torch.Generator):
        noise = draw_density_noise(density.shape, noise, density.device)
    if noise is not None:
        if noise.shape != density.shape:
            raise MethodError(f"density noise has shape {tuple(noise.shape)}, expected {tuple(density.shape)}")
        density = density + noise.to(density) * DENSITY_NOISE_SCALE
    denser = density[:, None, :] > density[:, :, None]
    dist_max = dist.amax(dim=(1, 2))[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    score = delta * density
    centres = score.topk(cluster_num, dim=-1).indices
    return DPCResult(centres=centres, dist_matrix=dist, density=density, delta=delta, score=score)


def take_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, j]]``: [B, n, D] x [B, k] -> [B, k, D], as one flat ``index_select``."""
    batch, count, dim = values.shape
    offsets = torch.arange(batch, device=values.device)[:, None] * count
    flat_index = (index + offsets).reshape(-1)
    return values.reshape(-1, dim).index_select(0, flat_index).reshape(batch, index.shape[1], dim)


def merge_into_centres(
    features: torch.Tensor, centres: torch.Tensor, dist_matrix: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge every non-centre token into its nearest centre (``llava_arch.py`` 100-150).

    features [B, n, D], centres [B, c] (distinct; output follows their order), dist_matrix
    [B, n, n]. A non-centre token joins ``argmin_c dist[token, centre_c]`` (first centre on
    ties). Output c = ``beta * centre + (1 - beta) * mean(members)``, the centre itself not in
    the mean; a centre without members is returned unchanged. Also returns the assignment of
    the non-centre tokens (ascending index order) [B, n - c], as indices into ``centres``.
    """
    batch, count, dim = features.shape
    clusters = centres.shape[1]
    is_member = torch.ones(batch, count, dtype=torch.bool, device=features.device)
    is_member.scatter_(1, centres, torch.zeros_like(centres, dtype=torch.bool))  # tensor src: traceable by fvcore
    members = is_member.reshape(-1).nonzero().squeeze(1)  # flat b * n + i
    to_centre = dist_matrix.gather(2, centres[:, None, :].expand(batch, count, clusters))
    assignment = to_centre.argmin(dim=-1).reshape(-1).index_select(0, members)
    slot = assignment + clusters * (members // count)
    sums = features.new_zeros(batch * clusters, dim).index_add_(0, slot, features.reshape(-1, dim).index_select(0, members))
    sizes = torch.bincount(slot, minlength=batch * clusters)
    merged = take_rows(features, centres).reshape(-1, dim)  # a centre without members stays itself
    filled = sizes.nonzero().squeeze(1)
    member_mean = sums.index_select(0, filled) / sizes.index_select(0, filled)[:, None].to(features.dtype)
    merged[filled] = beta * merged.index_select(0, filled) + (1 - beta) * member_mean
    return merged.reshape(batch, clusters, dim), assignment.reshape(batch, count - clusters)


def next_noise(source: NoiseSource) -> torch.Tensor | torch.Generator | None:
    """The noise for one clustering call: the generator itself, or the next stored draw."""
    if source is None or isinstance(source, torch.Generator):
        return source
    try:
        return next(source)
    except StopIteration:
        raise MethodError("ran out of stored density-noise draws") from None


def merge_tokens_by_density(
    features: torch.Tensor,
    positions: torch.Tensor,
    ratio: float,
    beta: float,
    knn: int,
    noise: NoiseSource = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Static tokens -> round(n * ratio) DPC cluster tokens (``llava_arch.py`` 199-213).

    features [B, n, D], positions [B, n] -> ([B, c, D], [B, c] int64), centres in ascending
    index order. When round(n * ratio) is 0 every static token is dropped (and no noise is
    drawn), as in the official code.
    """
    batch, count, dim = features.shape
    clusters = python_round(count * ratio)
    if clusters == 0:
        return features.new_empty(batch, 0, dim), positions.new_empty(batch, 0)
    dpc = cluster_dpc_knn(features, clusters, min(knn, clusters), next_noise(noise))
    centres = dpc.centres.sort(dim=-1).values
    merged, _ = merge_into_centres(features, centres, dpc.dist_matrix, beta)
    return merged, positions.gather(1, centres)


def select_by_attention(
    features: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, keep the ceil(n * ratio) tokens with the most encoder attention.

    ``merge_tokens_by_attention_density`` with D = 0 (``llava_arch.py`` 152-197):
    features [W, n, D], attention [W, n], positions [W, n] -> ([W, k, D], [W, k]), kept tokens
    in ascending index (position) order, not top-k order.
    """
    frames, count, dim = features.shape
    keep = min(math.ceil(count * ratio), count)
    if keep == 0:
        return features.new_empty(frames, 0, dim), positions.new_empty(frames, 0)
    index = attention.topk(keep, dim=1).indices.sort(dim=1).values
    return take_rows(features, index), positions.gather(1, index)


# ---------------------------------------------------------------------------------------
# One window through holitom(), and the whole outer stage
# ---------------------------------------------------------------------------------------


@dataclass
class TokenSequence:
    """Reduced tokens [M, D] and, per token, its flat source index t * N + pos (-1: newline)."""

    tokens: torch.Tensor
    sources: torch.Tensor


def insert_row_newlines(tokens: torch.Tensor, row_key: torch.Tensor, newline: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``newline`` after the last token of every run of equal ``row_key``.

    ``add_newline_token`` (``llava_arch.py`` 216-231) for tokens already in (frame, position)
    order; rows without a token get no newline. Returns the new sequence and the output
    slot of every input token.
    """
    count = tokens.shape[0]
    row_ends = torch.ones(count, dtype=torch.bool, device=tokens.device)
    row_ends[:-1] = row_key[1:] != row_key[:-1]
    ends_so_far = row_ends.long().cumsum(0)
    slots = torch.arange(count, device=tokens.device) + ends_so_far - row_ends.long()
    newline_slots = (torch.arange(count, device=tokens.device) + ends_so_far)[row_ends]
    out = tokens.new_empty(count + newline_slots.numel(), tokens.shape[1])
    out[slots] = tokens
    out[newline_slots] = newline.to(tokens.dtype)
    return out, slots


def reduce_window(
    window: Window,
    ratio: float,
    *,
    num_positions: int,
    beta: float = 0.6,
    knn: int = 7,
    noise: NoiseSource = None,
    newline: torch.Tensor | None = None,
    grid_width: int | None = None,
) -> TokenSequence:
    """``holitom()`` on one window (``llava_arch.py`` 234-275).

    Dynamic tokens: attention selection per frame. Static tokens (W > 1): DPC merging.
    Without ``newline`` ("one_token"/flat): static tokens, then each frame's kept dynamic
    tokens. With ``newline`` ("grid"): the first frame holds the static tokens and its dynamic
    ones, every frame in position order, with a newline after each non-empty grid row
    (``grid_width`` positions per row; default ``int(sqrt(N))`` as the official code).
    ``num_positions`` (N) makes the source indices ``frame * N + pos``.
    """
    size = window.size
    dynamic_pos = window.dynamic_pos.expand(size, -1)
    dyn_feat, dyn_pos = select_by_attention(window.dynamic_feat, window.dynamic_attn, dynamic_pos, ratio)
    if size > 1:
        static_feat, static_pos = merge_tokens_by_density(window.static_feat[None], window.static_pos[None], ratio, beta, knn, noise)
        static_feat, static_pos = static_feat[0], static_pos[0]
    else:
        static_feat, static_pos = window.static_feat, window.static_pos
    frame_of_dynamic = torch.arange(size, device=dyn_pos.device).repeat_interleave(dyn_pos.shape[1])
    tokens = torch.cat([static_feat, dyn_feat.flatten(0, 1)])
    frames = torch.cat([torch.zeros_like(static_pos), frame_of_dynamic])
    positions = torch.cat([static_pos, dyn_pos.flatten()])
    sources = (window.start + frames) * num_positions + positions
    if newline is None:
        return TokenSequence(tokens, sources)
    width = grid_width or math.isqrt(num_positions)
    order = (frames * num_positions + positions).argsort()
    row_key = frames[order] * num_positions + positions[order] // width
    out, slots = insert_row_newlines(tokens[order], row_key, newline)
    out_sources = sources.new_full((out.shape[0],), -1)
    out_sources[slots] = sources[order]
    return TokenSequence(out, out_sources)


@dataclass
class OuterResult:
    """The whole outer stage: tokens in LLM order plus what was decided on the way."""

    tokens: torch.Tensor  # [M, D]
    sources: torch.Tensor  # [M] flat t * N + pos; -1 for grid newlines
    feature_sim: torch.Tensor  # [T-1, N]
    windows: list[tuple[int, int]]
    total_reduced: float
    retain_adjusted: float
    static_masks: torch.Tensor  # [n_windows, N]
    segment_lengths: list[int]


def outer_stage(
    features: torch.Tensor,
    attention: torch.Tensor,
    retain: float,
    tau: float,
    *,
    max_window: int = 1024,
    beta: float = 0.6,
    knn: int = 7,
    noise: NoiseSource = None,
    newline: torch.Tensor | None = None,
    grid_width: int | None = None,
) -> OuterResult:
    """HoliTom before the LLM on pooled tokens: features [T, N, D], attention [T, N].

    ``llava_arch.py`` 375-407: frame similarity, DP windows, r' rescaling, static/dynamic
    split, ``holitom()`` per window, concatenated in window order. With a generator as
    ``noise`` the draws follow the official protocol (one ``rand`` per clustered window, in
    window order), so a generator seeded s reproduces ``torch.manual_seed(s)``.
    """
    frames, count, _ = features.shape
    similarity = frame_similarity(features, tau)
    windows, total_reduced = select_static_windows(similarity, frames, tau, max_window)
    ratio = adjusted_retain_ratio(retain, frames * count, total_reduced)
    parts = split_static_dynamic(features, attention, windows, similarity, tau)
    segments = [
        reduce_window(
            part, ratio, num_positions=count, beta=beta, knn=knn, noise=noise, newline=newline, grid_width=grid_width
        )
        for part in parts
    ]
    return OuterResult(
        tokens=torch.cat([s.tokens for s in segments]),
        sources=torch.cat([s.sources for s in segments]),
        feature_sim=similarity,
        windows=windows,
        total_reduced=total_reduced,
        retain_adjusted=ratio,
        static_masks=torch.stack([p.static_mask for p in parts]),
        segment_lengths=[int(s.tokens.shape[0]) for s in segments],
    )


# ---------------------------------------------------------------------------------------
# Inner stage: FastV-style selection at layer K plus sequential pairwise-average merge
# ---------------------------------------------------------------------------------------


def last_query_scores(last_query_attention: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Mean over heads of the last query's attention [H, S], restricted to the visual span."""
    return last_query_attention.mean(dim=0)[span[0] : span[1]]


def inner_keep_count(visual: int, prune_ratio: float) -> int:
    """round(L * (1 - r)), Python round (half to even), as the top-k size in ``modeling_qwen2.py`` 144-208."""
    return python_round(visual * (1 - prune_ratio))


def sequential_pairwise_merge(kept: torch.Tensor, dropped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed form of ``for i: kept[target[i]] = (kept[target[i]] + dropped[i]) / 2`` in order.

    kept [B, K, D], dropped [B, M, D], target [B, M] (indices into kept). A kept token that
    absorbs a_1..a_m (in that order) ends as k / 2^m + sum_i a_i / 2^(m-i+1). Computed in
    float32 with exact powers of two; equal to the loop up to rounding.
    """
    batch, kept_count, dim = kept.shape
    offset = kept_count * torch.arange(batch, device=kept.device)[:, None]
    slot = (target + offset).reshape(-1)
    absorbed = torch.bincount(slot, minlength=batch * kept_count)
    order = torch.argsort(slot, stable=True)
    group_start = absorbed.cumsum(0) - absorbed
    rank = torch.empty_like(slot)
    rank[order] = torch.arange(slot.numel(), device=slot.device) - group_start[slot[order]]
    exponent = (absorbed[slot] - rank).double()
    weight = torch.pow(0.5, exponent).float()
    merged = kept.reshape(-1, dim).float() * torch.pow(0.5, absorbed.double()).float()[:, None]
    merged.index_add_(0, slot, dropped.reshape(-1, dim).float() * weight[:, None])
    return merged.reshape(batch, kept_count, dim).to(kept.dtype)


@dataclass
class InnerMerge:
    """The inner stage's decision on a visual span of L tokens (indices relative to the span)."""

    keep: torch.Tensor  # [n_keep] ascending
    hidden: torch.Tensor  # [B, n_keep, D] kept tokens after merging, in ``keep`` order
    top: torch.Tensor  # [n_keep] top-k order (``top_attention_rank_index`` minus the start)
    dropped: torch.Tensor  # [L - n_keep] ascending
    target: torch.Tensor  # [B, L - n_keep] index into ``top`` each dropped token merges into


def inner_merge(visual_hidden: torch.Tensor, scores: torch.Tensor, prune_ratio: float) -> InnerMerge:
    """``modeling_qwen2.py`` 144-208 on the visual span: visual_hidden [B, L, D], scores [L].

    Keep the top round(L * (1 - r)) by score (the scores of batch 0 decide for every batch);
    cosine similarity of dropped to kept tokens is computed once, before merging; each
    dropped token (ascending) is averaged into its most similar kept token (first on ties).
    """
    visual = visual_hidden.shape[1]
    keep_count = inner_keep_count(visual, prune_ratio)
    if keep_count < 1:
        raise BudgetError(f"holitom inner stage keeps no token out of {visual} (r={prune_ratio})")
    top = scores.topk(keep_count).indices
    is_dropped = torch.ones(visual, dtype=torch.bool, device=scores.device)
    is_dropped[top] = False
    dropped = is_dropped.nonzero().flatten()
    top_states = visual_hidden[:, top].float()
    dropped_states = visual_hidden[:, dropped].float()
    dot = torch.bmm(dropped_states, top_states.transpose(1, 2))
    norms = dropped_states.norm(dim=-1, keepdim=True) * top_states.norm(dim=-1, keepdim=True).transpose(1, 2)
    similarity = dot / norms.clamp(min=torch.finfo(torch.float32).tiny)
    target = similarity.max(dim=-1).indices
    merged = sequential_pairwise_merge(top_states, dropped_states, target)
    keep, order = top.sort()
    return InnerMerge(
        keep=keep, hidden=merged[:, order].to(visual_hidden.dtype), top=top, dropped=dropped, target=target
    )


# ---------------------------------------------------------------------------------------
# The reducer
# ---------------------------------------------------------------------------------------


def default_tau(retain: float) -> float:
    """The official scripts' tau: 0.65 at 10 % retention or less, 0.80 above."""
    return 0.65 if retain <= 0.10 else 0.80


DEFAULT_RETAIN = 0.10
PAPER_LAYERS = {28: 18, 80: 60}  # the official scripts' K: Qwen2-7B (LLaVA-OV/Video-7B), Qwen2-72B


def paper_layer(num_layers: int) -> int:
    """K when not given: the official K for the depths the paper ran, else 18/28 of the depth."""
    if num_layers < 2:
        raise MethodError(f"holitom: the inner merge needs an LLM of at least 2 layers, not {num_layers}")
    layer = PAPER_LAYERS.get(num_layers, round(num_layers * 18 / 28))
    return min(max(layer, 1), num_layers - 1)


@register("holitom")
class HoliTom(Reducer):
    stage = STAGE_BOTH
    summary = "outer: DP temporal windows + DPC-kNN static merge + attention-kept dynamic tokens; inner: merge at layer K"
    position_policy = "compact"
    params = (
        ParamSpec("tau", float, None, "static threshold on frame-to-frame cosine (default: 0.65 if retain <= 0.10 else 0.80)"),
        ParamSpec("max_window", int, 1024, "longest temporal window in frames"),
        ParamSpec("beta", float, 0.6, "weight of a cluster centre against the mean of its members"),
        ParamSpec("knn", int, 7, "neighbours for the DPC density (capped by the cluster count)"),
        ParamSpec("inner", bool, True, "also merge inside the LLM at layer K"),
        ParamSpec("K", int, "auto", "layer at whose input the inner merge runs (attention from layer K-1); auto: the paper's K for the LLM's depth"),
        ParamSpec("r", float, 0.5, "fraction of visual tokens pruned (merged) at layer K"),
        ParamSpec("noise", bool, True, "add the official 1e-6 density noise (seeded)"),
        ParamSpec("seed", int, 0, "seed of the density noise"),
    )

    def validate(self) -> None:
        v = self.values
        for name in ("max_window", "knn", "K", "seed"):
            if name == "K" and v[name] == "auto":
                continue
            if not isinstance(v[name], int) or isinstance(v[name], bool):
                raise MethodError(f"holitom: {name}={v[name]!r} must be an integer")
        if v["max_window"] < 1 or v["knn"] < 1:
            raise MethodError("holitom: max_window and knn must be at least 1")
        if v["K"] != "auto" and v["K"] < 1:
            raise MethodError(f"holitom: K={v['K']} must be at least 1 (the score comes from layer K-1)")
        if not 0.0 <= v["beta"] <= 1.0:
            raise MethodError(f"holitom: beta={v['beta']} must be in [0, 1]")
        if not 0.0 <= v["r"] < 1.0:
            raise BudgetError(f"holitom: r={v['r']} must be in [0, 1)")
        if v["tau"] is not None and not -1.0 <= v["tau"] <= 1.0:
            raise MethodError(f"holitom: tau={v['tau']} must be a cosine similarity in [-1, 1]")

    def retain_ratio(self, grid_tokens: int) -> float:
        """The budget as a ratio of the grid tokens (0.10 when no budget is given)."""
        retain = self.budget.ratio_of(grid_tokens) if self.budget.is_set else DEFAULT_RETAIN
        if python_round(retain * grid_tokens) < 1:
            raise BudgetError(f"holitom: retain={retain:g} keeps no token out of {grid_tokens}")
        return retain

    def tau(self, retain: float) -> float:
        return default_tau(retain) if self.values["tau"] is None else float(self.values["tau"])

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        frames, (height, width), dim = video.num_frames, video.grid, video.dim
        attention = video.encoder_attention(pooled=True)
        if tuple(attention.shape) != (frames, height, width):
            raise MethodError(f"holitom: encoder attention has shape {tuple(attention.shape)}, expected {(frames, height, width)}")
        retain = self.retain_ratio(video.grid_token_count)
        tau = self.tau(retain)
        features = video.features.reshape(frames, height * width, dim).float()
        noise = torch.Generator().manual_seed(self.values["seed"]) if self.values["noise"] else None
        grid_newlines = video.newline_layout == "grid" and video.newline is not None
        result = outer_stage(
            features,
            attention.reshape(frames, height * width).float().to(features.device),
            retain,
            tau,
            max_window=self.values["max_window"],
            beta=self.values["beta"],
            knn=self.values["knn"],
            noise=noise,
            newline=video.newline.float() if grid_newlines else None,
            grid_width=width,
        )
        if result.tokens.shape[0] == 0:
            raise BudgetError(f"holitom: retain={retain:g} left no visual token")
        if grid_newlines:  # the official grid layout: newlines placed by the outer stage itself
            embeddings, positions = result.tokens.to(video.features.dtype), result.sources
        else:
            embeddings, positions = append_newline(video, result.tokens.to(video.features.dtype), result.sources)
        return ReducedTokens(embeddings, positions, info=self.outer_info(result, retain, tau))

    @staticmethod
    def outer_info(result: OuterResult, retain: float, tau: float) -> dict[str, Any]:
        return {
            "windows": len(result.windows),
            "window_bounds": [list(w) for w in result.windows],
            "total_reduced": int(result.total_reduced),
            "retain": retain,
            "retain_adjusted": result.retain_adjusted,
            "tau": tau,
            "static_positions": int(result.static_masks.sum()),
            "outer_tokens": int(result.tokens.shape[0]),
        }

    def in_llm_layer(self, num_layers: int) -> int | None:
        if not self.values["inner"]:
            return None
        if self.values["K"] == "auto":
            return paper_layer(num_layers)
        if self.values["K"] >= num_layers:
            raise MethodError(f"holitom: K={self.values['K']} is beyond the LLM's {num_layers} layers")
        return self.values["K"]

    def reduce_in_llm(self, view: LayerView) -> InLLMDecision:
        start, end = view.visual_span
        scores = last_query_scores(view.last_query_attention, view.visual_span)
        merge = inner_merge(view.hidden[start:end][None], scores, self.values["r"])
        info = {"inner_kept": int(merge.keep.numel()), "K": view.layer}  # K resolved (K=auto) for the row
        return InLLMDecision(keep=merge.keep, hidden=merge.hidden[0], info=info)

    def token_schedule(self, visual_tokens: int, num_layers: int) -> list[tuple[int, int]]:
        outer = python_round(self.retain_ratio(visual_tokens) * visual_tokens)
        layer = self.in_llm_layer(num_layers)
        if layer is None:
            return [(num_layers, outer)]
        return [(layer, outer), (num_layers - layer, inner_keep_count(outer, self.values["r"]))]
