"""DivPrune behaviour: identical choices to the official loop, degenerate inputs, options, budgets."""

from __future__ import annotations

import pytest
import torch

from tokbench.methods.base import Budget, BudgetError, MethodError, VideoTokens
from tokbench.methods.divprune import DivPrune, divprune_select, frame_budgets, select_indices
from tokbench.methods.registry import build_reducer


def official_loop(x: torch.Tensor, k: int) -> torch.Tensor:
    """The released O(k^2 N) loop structure (llava_arch.py 147-171), for comparison."""
    xn = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - xn @ xn.t()
    picked = torch.empty(k, dtype=torch.long)
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            scores = dist[picked[:i]].min(dim=0).values
        picked[i] = scores.argmax()
    return picked


def video(frames: int = 3, side: int = 4, dim: int = 8, seed: int = 0, newline: bool = True) -> VideoTokens:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(frames, side, side, dim, generator=gen)
    return VideoTokens(feats, newline=torch.full((dim,), 7.0) if newline else None)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_official_loop_on_random_tokens(seed):
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(divprune_select(x, 40), official_loop(x, 40))


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_official_loop_with_ties(seed):
    # Entries in {-1, 0, 1} in 3-D: many exactly equal distances, so argmax ties everywhere.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (60, 3), generator=gen).float()
    x = x[x.norm(dim=1) > 0]
    distinct = torch.unique(x / x.norm(dim=1, keepdim=True), dim=0).shape[0]
    k = distinct // 2
    official = official_loop(x, k)
    assert official.unique().numel() == k  # the official run picks distinct tokens here
    assert torch.equal(divprune_select(x, k), official)


def test_zero_and_identical_vectors_give_distinct_finite_choices():
    x = torch.cat([torch.zeros(5, 4), torch.ones(6, 4), torch.randn(5, 4, generator=torch.Generator().manual_seed(1))])
    picked = divprune_select(x, 12)
    assert picked.unique().numel() == 12
    all_same = divprune_select(torch.ones(10, 4), 10)
    assert sorted(all_same.tolist()) == list(range(10))
    all_zero = divprune_select(torch.zeros(7, 4), 3)
    assert all_zero.unique().numel() == 3


def test_single_token():
    assert divprune_select(torch.randn(1, 4), 1).tolist() == [0]


def test_frame_scope_splits_the_budget_and_selects_within_frames():
    v = video(frames=3, side=4)
    k = 10
    assert frame_budgets(k, 3) == [4, 3, 3]
    chosen = select_indices(v.features, k, "frame", "greedy")
    per_frame = v.features.reshape(3, 16, -1)
    expected = [divprune_select(per_frame[t], kt) + 16 * t for t, kt in enumerate(frame_budgets(k, 3))]
    assert torch.equal(chosen, torch.cat(expected))


def test_orders_keep_the_same_set():
    v = video()
    greedy = select_indices(v.features, 9, "global", "greedy")
    ordered = select_indices(v.features, 9, "global", "sorted")
    assert torch.equal(greedy.sort().values, ordered)
    assert torch.equal(greedy, divprune_select(v.flat(), 9))


def test_reducer_output_newline_and_positions():
    v = video(frames=2, side=5)
    out = build_reducer("divprune", {"retain": 0.2}).reduce_visual(v)
    k = round(0.2 * 50)
    assert out.count == k + 1
    kept = out.source_positions[:-1]
    assert torch.equal(kept, kept.sort().values)
    assert torch.equal(out.embeddings[:-1], v.flat()[kept])
    assert out.source_positions[-1] == 50 and torch.equal(out.embeddings[-1], v.newline)
    assert out.info["kept"] == k


def test_default_budget_is_ten_percent():
    reducer = build_reducer("divprune")
    assert reducer.budget == Budget(retain=0.1)
    out = reducer.reduce_visual(video(frames=5, side=4, newline=False))
    assert out.count == 8


def test_budgets_that_leave_nothing_or_exceed_raise():
    v = video(frames=1, side=4)
    with pytest.raises(BudgetError):
        build_reducer("divprune", {"retain": 0.01}).reduce_visual(v)
    with pytest.raises(BudgetError):
        build_reducer("divprune", {"tokens": 17}).reduce_visual(v)
    with pytest.raises(BudgetError):
        build_reducer("divprune", {"tokens": 0})


def test_bad_parameters_and_inputs():
    with pytest.raises(MethodError):
        build_reducer("divprune", {"scope": "video"})
    bad = video()
    bad.features[0, 0, 0, 0] = float("nan")
    with pytest.raises(MethodError):
        DivPrune().reduce_visual(bad)


def test_paper_flops_at_ten_percent_on_ov7b():
    layers, d, m = 28, 3584, 18944
    ((stage_layers, n),) = build_reducer("divprune").token_schedule(6272, layers)
    flops = stage_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert n == 627 and round(flops / 1e12, 2) == 3.36
