"""HoliTom behaviour beyond the golden files (tests/golden_checks/holitom.py covers conformance).

Registration and parameters, the paper-convention FLOPs of ``token_schedule``, bad inputs
(single frame, identical or zero features, budgets that leave nothing, missing encoder
attention), the reducer end to end on random videos, the vectorised pieces against plain
loop references (DP windows, merge into centres, the inner sequential merge), the fast frame
similarity's ``> tau`` decisions against the official op sequence, seeding, and the speed
benchmark's re-implementation of the official loops against ours.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmarks.bench_holitom import reference_similarity, run_case
from tokbench.methods import holitom as ht
from tokbench.methods.base import (
    STAGE_BOTH,
    Budget,
    BudgetError,
    LayerView,
    MethodError,
    VideoTokens,
)
from tokbench.methods.registry import build_reducer

QWEN2_7B = {"layers": 28, "d": 3584, "m": 18944}


def paper_tflops(schedule: list[tuple[int, int]], d: int = QWEN2_7B["d"], m: int = QWEN2_7B["m"]) -> float:
    """Sum over stages of layers * (4nd^2 + 2n^2d + 2ndm), in TFLOPs."""
    return sum(layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) for layers, n in schedule) / 1e12


def random_video(
    frames: int = 6, side: int = 8, dim: int = 16, seed: int = 0, *, static: bool = True, attention: bool = True
) -> VideoTokens:
    """A video whose background is steady (so windows form) with per-frame noise, plus a newline."""
    gen = torch.Generator().manual_seed(seed)
    background = torch.randn(side, side, dim, generator=gen)
    noise = torch.randn(frames, side, side, dim, generator=gen)
    features = background + (0.2 if static else 3.0) * noise
    weights = torch.softmax(torch.randn(frames, side * side, generator=gen), dim=-1).reshape(frames, side, side)
    return VideoTokens(
        features=features,
        newline=torch.randn(dim, generator=gen),
        attention_fn=(lambda pooled: weights) if attention else None,
    )


def constant_video(value: torch.Tensor, frames: int = 5, side: int = 6) -> VideoTokens:
    features = value.expand(frames, side, side, value.shape[-1]).clone()
    weights = torch.full((frames, side, side), 1.0 / (side * side))
    return VideoTokens(features=features, newline=torch.ones(value.shape[-1]), attention_fn=lambda pooled: weights)


# --- registration, parameters, schedule --------------------------------------------------


def test_registered_and_built_from_strings():
    reducer = build_reducer("holitom", {"retain": "0.25"})
    assert isinstance(reducer, ht.HoliTom)
    assert reducer.stage == STAGE_BOTH and reducer.position_policy_used == "compact"
    assert reducer.tau(reducer.retain_ratio(6272)) == 0.80
    other = build_reducer("holitom", {"retain": "0.1", "inner": "false", "K": "10", "tau": "0.7", "seed": "3"})
    assert other.values["inner"] is False and other.values["K"] == 10 and other.values["seed"] == 3
    assert other.tau(0.1) == 0.7


def test_default_budget_and_tau():
    reducer = ht.HoliTom()
    assert reducer.retain_ratio(6272) == 0.10 and reducer.tau(0.10) == 0.65
    assert ht.HoliTom(budget=Budget(tokens=627)).retain_ratio(6270) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "retain, inner, expected",
    [(0.25, True, 7.11), (0.10, True, 2.76), (0.25, False, 8.71), (0.10, False, 3.36)],
)
def test_token_schedule_paper_flops(retain: float, inner: bool, expected: float):
    reducer = ht.HoliTom(budget=Budget(retain=retain), inner=inner)
    schedule = reducer.token_schedule(6272, QWEN2_7B["layers"])
    assert round(paper_tflops(schedule), 2) == expected


def test_token_schedule_stages():
    assert ht.HoliTom(budget=Budget(retain=0.25)).token_schedule(6272, 28) == [(18, 1568), (10, 784)]
    assert ht.HoliTom(budget=Budget(retain=0.10)).token_schedule(6272, 28) == [(18, 627), (10, 314)]


def test_in_llm_layer():
    assert ht.HoliTom().in_llm_layer(28) == 18
    assert ht.HoliTom(inner=False).in_llm_layer(28) is None
    with pytest.raises(MethodError):
        ht.HoliTom(K=28).in_llm_layer(28)
    with pytest.raises(MethodError):
        ht.HoliTom(K=0)
    with pytest.raises(MethodError):
        ht.HoliTom(r=1.0)


# --- the reducer end to end ----------------------------------------------------------------


def test_reduce_visual_on_random_video():
    video = random_video(frames=8, side=8, dim=16)
    reducer = ht.HoliTom(budget=Budget(retain=0.25))
    out = reducer.reduce_visual(video)
    grid_tokens = video.grid_token_count
    assert out.count == out.info["outer_tokens"] + 1
    assert torch.equal(out.embeddings[-1], video.newline) and int(out.source_positions[-1]) == grid_tokens
    sources = out.source_positions[:-1]
    assert sources.unique().numel() == sources.numel() and 0 <= int(sources.min()) and int(sources.max()) < grid_tokens
    assert 0.1 * grid_tokens < out.count - 1 < 0.5 * grid_tokens
    # the reducer is the outer stage plus the newline, with the method's own seeded noise
    flat = video.features.reshape(8, 64, 16)
    expected = ht.outer_stage(flat, video.encoder_attention().reshape(8, 64), 0.25, 0.8, noise=torch.Generator().manual_seed(0))
    assert torch.equal(out.embeddings[:-1], expected.tokens)
    assert out.info["windows"] == len(expected.windows) and out.info["retain_adjusted"] == expected.retain_adjusted
    # dynamic tokens are copies of their source token
    frame, pos = sources // 64, sources % 64
    window_of = torch.tensor([i for i, (s, e) in enumerate(expected.windows) for _ in range(s, e + 1)])
    dynamic = ~expected.static_masks[window_of[frame], pos]
    assert torch.equal(out.embeddings[:-1][dynamic], video.flat()[sources[dynamic]])


def test_reduce_visual_keeps_dtype():
    video = random_video()
    video.features = video.features.to(torch.bfloat16)
    out = ht.HoliTom(budget=Budget(retain=0.2)).reduce_visual(video)
    assert out.embeddings.dtype == torch.bfloat16 and torch.isfinite(out.embeddings.float()).all()


def test_single_frame_video():
    video = random_video(frames=1, side=14, dim=8)
    out = ht.HoliTom(budget=Budget(retain=0.10)).reduce_visual(video)
    assert out.info["windows"] == 1 and out.info["total_reduced"] == 0
    assert out.count == math.ceil(196 * 0.10) + 1


def test_identical_frames_no_nan():
    value = torch.randn(12)
    out = ht.HoliTom(budget=Budget(retain=0.2)).reduce_visual(constant_video(value))
    assert out.info["windows"] == 1 and out.info["static_positions"] == 36
    assert torch.isfinite(out.embeddings).all()
    assert torch.allclose(out.embeddings[:-1], value.expand(out.count - 1, -1))


@pytest.mark.parametrize("noise", [True, False])
def test_zero_features_no_nan(noise: bool):
    out = ht.HoliTom(budget=Budget(retain=0.2), noise=noise).reduce_visual(constant_video(torch.zeros(12)))
    assert out.count > 1 and torch.isfinite(out.embeddings).all()


def test_budget_that_leaves_nothing_raises():
    video = random_video(frames=2, side=4, dim=8)
    with pytest.raises(BudgetError):
        ht.HoliTom(budget=Budget(retain=0.001)).reduce_visual(video)
    with pytest.raises(BudgetError):
        ht.HoliTom(budget=Budget(tokens=33)).reduce_visual(video)


def test_missing_encoder_attention():
    with pytest.raises(MethodError, match="vision-encoder attention"):
        ht.HoliTom().reduce_visual(random_video(attention=False))


def test_seeded_noise_is_deterministic():
    video = random_video(frames=6, side=8, dim=16, seed=4)
    first = ht.HoliTom(budget=Budget(retain=0.2), seed=7).reduce_visual(video)
    again = ht.HoliTom(budget=Budget(retain=0.2), seed=7).reduce_visual(video)
    assert torch.equal(first.embeddings, again.embeddings) and torch.equal(first.source_positions, again.source_positions)
    off = ht.HoliTom(budget=Budget(retain=0.2), noise=False)
    assert torch.equal(off.reduce_visual(video).embeddings, off.reduce_visual(video).embeddings)


def test_generator_draws_match_global_seed():
    with torch.random.fork_rng():
        torch.manual_seed(11)
        expected = torch.rand(2, 30)
    drawn = ht.draw_density_noise(torch.Size([2, 30]), torch.Generator().manual_seed(11), torch.device("cpu"))
    assert torch.equal(drawn, expected)


def test_grid_mode_newlines():
    video = random_video(frames=5, side=8, dim=8)
    flat, attn = video.features.reshape(5, 64, 8), video.encoder_attention().reshape(5, 64)
    result = ht.outer_stage(flat, attn, 0.3, 0.8, noise=None, newline=video.newline, grid_width=8)
    newline = result.sources == -1
    assert torch.equal(result.tokens[newline], video.newline.expand(int(newline.sum()), -1))
    assert not newline[0] and newline[-1]
    flat_result = ht.outer_stage(flat, attn, 0.3, 0.8, noise=None)
    assert torch.equal(result.sources[~newline].sort().values, flat_result.sources.sort().values)


# --- vectorised pieces against plain loops --------------------------------------------------


def loop_windows(gain: list[list[float]], frames: int, max_window: int) -> tuple[list[tuple[int, int]], float]:
    """The DP written out directly (strict >, dp[-1] = 0)."""
    dp, start_of = [0.0] * frames, [0] * frames
    for i in range(frames):
        best, start = (dp[i - 1] if i > 0 else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            value = (dp[i - size] if i - size >= 0 else 0.0) + gain[i - size + 1][i]
            if value > best:
                best, start = value, i - size + 1
        dp[i], start_of[i] = best, start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((start_of[i], i))
        i = start_of[i] - 1
    return windows[::-1], dp[-1]


def segmentation_total(gain: list[list[float]], windows: list[tuple[int, int]]) -> float:
    return sum(gain[s][e] for s, e in windows)


def all_segmentations(frames: int, max_window: int):
    for cuts in itertools.product([False, True], repeat=frames - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [frames]
        windows = [(a, b - 1) for a, b in itertools.pairwise(bounds)]
        if all(e - s + 1 <= max_window for s, e in windows):
            yield windows


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_window", [1, 2, 3, 1024])
def test_dp_windows_optimal_with_official_ties(seed: int, max_window: int):
    gen = torch.Generator().manual_seed(seed)
    frames = 7
    # coarse similarities make many equal gains, exercising the tie rules
    similarity = torch.randint(0, 3, (frames - 1, 5), generator=gen).float() / 2
    gain = ht.window_gain_matrix(similarity, 0.4).tolist()
    windows, total = ht.select_static_windows(similarity, frames, 0.4, max_window)
    assert (windows, total) == loop_windows(gain, frames, max_window)
    assert total == max(segmentation_total(gain, w) for w in all_segmentations(frames, max_window))


@pytest.mark.parametrize("dim", [16, 896])
def test_frame_similarity_official_bits_and_fast_values(dim: int):
    features = random_video(frames=7, side=6, dim=dim, seed=dim).features.flatten(1, 2)
    official = reference_similarity(features)
    assert torch.equal(ht.official_frame_similarity(features), official)
    assert (ht.frame_similarity(features) - official).abs().max() <= ht.similarity_margin(dim)


@pytest.mark.parametrize("dim", [16, 896])
def test_frame_similarity_decides_like_official_at_every_threshold(dim: int):
    """tau set to official values themselves (and one float step either side): every entry
    within rounding of tau must be recomputed with the official bits, or a decision flips."""
    features = random_video(frames=7, side=6, dim=dim, seed=dim + 1).features.flatten(1, 2)
    official = reference_similarity(features)
    for value in official.flatten()[::7].tolist():
        for tau in (value, math.nextafter(value, -2.0), math.nextafter(value, 2.0)):
            ours = ht.frame_similarity(features, tau)
            assert torch.equal(ours > tau, official > tau), tau


def test_frame_similarity_degenerate_vectors_take_the_official_path():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(4, 5, 8, generator=gen)
    features[1, 0] = 0.0
    features[2, 1] *= 1e-20
    features[0, 2] *= 1e20
    features[3, 3] = float("nan")
    bad = torch.zeros(4, 5, dtype=torch.bool)
    bad[1, 0] = bad[2, 1] = bad[0, 2] = bad[3, 3] = True
    touched = bad[:-1] | bad[1:]
    ours, official = ht.frame_similarity(features, 0.5), reference_similarity(features)
    assert torch.equal(ours.isnan(), official.isnan())
    assert official[touched].isnan().sum() == 1  # the NaN vector; the others have values
    assert torch.equal(ours[touched].nan_to_num(), official[touched].nan_to_num())
    assert ht.frame_similarity(features[:1]).shape == (0, 5)


def loop_merge_into_centres(feat: torch.Tensor, centres: torch.Tensor, dist: torch.Tensor, beta: float) -> torch.Tensor:
    out = []
    for b in range(feat.shape[0]):
        members = [i for i in range(feat.shape[1]) if i not in centres[b].tolist()]
        owner = {i: int(dist[b, i, centres[b]].argmin()) for i in members}
        tokens = []
        for c, centre in enumerate(centres[b].tolist()):
            mine = [i for i in members if owner[i] == c]
            if mine:
                tokens.append(beta * feat[b, centre] + (1 - beta) * feat[b, mine].mean(dim=0))
            else:
                tokens.append(feat[b, centre])
        out.append(torch.stack(tokens))
    return torch.stack(out)


def test_merge_into_centres_matches_loop():
    gen = torch.Generator().manual_seed(2)
    feat = torch.randn(2, 40, 6, generator=gen)
    dpc = ht.cluster_dpc_knn(feat, 9, 7, torch.Generator().manual_seed(0))
    centres = dpc.centres.sort(dim=-1).values
    merged, assignment = ht.merge_into_centres(feat, centres, dpc.dist_matrix, 0.6)
    assert torch.allclose(merged, loop_merge_into_centres(feat, centres, dpc.dist_matrix, 0.6), atol=1e-6)
    assert assignment.shape == (2, 31)


def loop_inner_merge(hidden: torch.Tensor, scores: torch.Tensor, prune_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Official semantics on a span: top-k, similarity once, then in-place pairwise averages."""
    hidden = hidden.clone()
    length = hidden.shape[1]
    top = scores.topk(round(length * (1 - prune_ratio))).indices
    dropped = torch.tensor([i for i in range(length) if i not in top.tolist()], dtype=torch.long)
    a, k = hidden[:, dropped], hidden[:, top]
    sim = torch.bmm(a, k.transpose(1, 2)) / (a.norm(dim=-1, keepdim=True) * k.norm(dim=-1, keepdim=True).transpose(1, 2))
    target = sim.max(dim=-1).indices
    for b in range(hidden.shape[0]):
        for i in range(dropped.numel()):
            j = top[target[b, i]]
            hidden[b, j] = (hidden[b, j] + hidden[b, dropped[i]]) / 2
    keep = top.sort().values
    return keep, hidden[:, keep]


@pytest.mark.parametrize("prune_ratio", [0.5, 0.8, 0.3])
def test_inner_merge_matches_loop(prune_ratio: float):
    gen = torch.Generator().manual_seed(5)
    directions = torch.randn(4, 16, generator=gen)  # few directions: many dropped tokens per kept one
    hidden = directions[torch.randint(0, 4, (2, 61), generator=gen)] + 0.3 * torch.randn(2, 61, 16, generator=gen)
    scores = torch.rand(61, generator=gen)
    merge = ht.inner_merge(hidden, scores, prune_ratio)
    keep, expected = loop_inner_merge(hidden, scores, prune_ratio)
    assert torch.equal(merge.keep, keep)
    assert torch.allclose(merge.hidden, expected, atol=1e-6)
    assert int(torch.bincount(merge.target[0]).max()) >= 2  # some kept token absorbs several


def test_reduce_in_llm():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 8, generator=gen)
    attention = torch.softmax(torch.randn(4, 40, generator=gen), dim=-1)
    view = LayerView(hidden=hidden, visual_span=(5, 35), last_query_attention=attention, layer=18, num_layers=28)
    decision = ht.HoliTom().reduce_in_llm(view)
    assert decision.keep.numel() == 15 and torch.equal(decision.keep, decision.keep.sort().values)
    assert decision.hidden.shape == (15, 8)
    scores = attention.mean(dim=0)[5:35]
    assert torch.equal(decision.keep, scores.topk(15).indices.sort().values)


def test_inner_zero_hidden_states_no_nan():
    merge = ht.inner_merge(torch.zeros(1, 10, 4), torch.rand(10), 0.5)
    assert torch.isfinite(merge.hidden).all()


def test_inner_span_too_short_raises():
    with pytest.raises(BudgetError):
        ht.inner_merge(torch.randn(1, 1, 4), torch.rand(1), 0.5)


@pytest.mark.parametrize("retain", [0.1, 0.5])
def test_speed_benchmark_reference_agrees_with_ours(retain: float):
    """The benchmark's re-implementation of the official loops (one_token and grid layouts)
    gives our windows, decisions and tokens; ``run_case`` asserts each of them."""
    row = run_case(dim=32, frames=8, retain=retain, tau=ht.default_tau(retain), max_window=1024, repeats=1, seed=0)
    assert row["windows"] >= 1
    assert row["grid_tokens"] > row["tokens"]  # newlines added
