"""One contract for every registered method (built-ins and ``tokbench.methods`` entry points).

Each method runs on synthetic ``VideoTokens`` (a random un-pooled grid, the model's 2x2 average
pooling, a newline embedding, encoder attention on request) and, when it acts inside the LLM,
on a synthetic ``LayerView``. No model is built. The contract:

* shapes: ``ReducedTokens`` is [M, D] in the features' dtype with one long position per token;
  an in-LLM decision keeps ascending, distinct indices of the visual span, and any merged
  hidden states match them;
* budgets: the pre-LLM count follows the method's documented rule (``COUNT_RULES``; a method
  without an entry, e.g. a third-party one, must keep exactly what its ``token_schedule``
  prices, the base class's rule);
* positions: in the default layout (grid tokens ``0..T*H*W-1``, the newline at ``T*H*W``, and
  only that token there), distinct, or -1 only for the methods whose tokens have no grid origin
  (``NO_GRID_ORIGIN``);
* the token schedule is what ``tokbench flops`` prices (``tokbench.harness.flops.paper_flops``): it
  covers every layer, starts at the pre-LLM count the rule above compares against, and its
  in-LLM stage keeps what ``reduce_in_llm`` keeps when fed that count;
* degenerate input (all-zero features, identical frames, a single frame) gives finite output.

Methods with learned weights (``allow_random_weights``: VQToken's attention mode) run with
seeded random weights: the contract checks shapes and counts, not answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tokbench.harness.flops import ModelDims, paper_flops
from tokbench.methods.base import STAGE_BOTH, STAGE_IN_LLM, InLLMDecision, LayerView, Reducer, VideoTokens
from tokbench.methods.registry import available, build_reducer

FRAMES, SIDE, DIM = 4, 4, 16  # pooled 4x4 grid per frame (64 grid tokens), un-pooled 8x8
LAYERS = 28  # deep enough for every default K (HoliTom's 18)
DIMS = ModelDims("synthetic", layers=LAYERS, hidden=DIM, ffn=2 * DIM, tokens_per_frame=SIDE * SIDE)
BUDGETS = ({}, {"retain": "0.3"}, {"tokens": "5"})  # 0.3 and 5 leave uniform_pool below the budget
NO_GRID_ORIGIN = {"vqtoken", "token_dynamics"}  # codebook entries (ReducedTokens: -1)


def exact(reducer: Reducer, video: VideoTokens, count: int, priced: int, info: dict) -> bool:
    """Exactly the priced count (divprune's round(r * N) or the token budget; full's every token)."""
    return count == priced


def at_most_priced(reducer: Reducer, video: VideoTokens, count: int, priced: int, info: dict) -> bool:
    """uniform_pool: each frame pooled to the largest grid with h * w <= budget / T, so at most the
    budget; vqtoken: K codebook entries (fewer when clusters come out empty; adaptive K priced at
    k_max), or max(T, K) attention outputs within the budget."""
    return 1 <= count <= priced


def holitom_bound(reducer: Reducer, video: VideoTokens, count: int, priced: int, info: dict) -> bool:
    """HoliTom: the rescaled ratio r' spreads r * N over the tokens left after static merging;
    each window rounds its static clusters (+0.5 at most) and each frame ceils its dynamic
    tokens (+1 at most), so the count is below r * N + windows / 2 + T."""
    retain = reducer.retain_ratio(video.grid_token_count)
    bound = retain * video.grid_token_count + info["windows"] / 2 + video.num_frames
    return 1 <= count < bound and count == info["outer_tokens"]


COUNT_RULES: dict[str, Callable[..., bool]] = {
    "full": exact,
    "divprune": exact,
    "fastv": exact,
    "uniform_pool": at_most_priced,
    "vqtoken": at_most_priced,
    "token_dynamics": at_most_priced,
    "holitom": holitom_bound,
}


def average_pool(grid: torch.Tensor) -> torch.Tensor:
    """The synthetic model's 2x2 pooling: [T, H0, W0, C] -> [T, H0/2, W0/2, C]."""
    return F.avg_pool2d(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def synthetic_video(kind: str = "random", frames: int = FRAMES, seed: int = 0) -> VideoTokens:
    generator = torch.Generator().manual_seed(seed)
    unpooled = torch.randn(frames, 2 * SIDE, 2 * SIDE, DIM, generator=generator)
    logits = torch.randn(frames, 2 * SIDE, 2 * SIDE, generator=generator)
    if kind == "zeros":
        unpooled, logits = torch.zeros_like(unpooled), torch.zeros_like(logits)
    elif kind == "identical":
        unpooled, logits = unpooled[:1].expand_as(unpooled).clone(), logits[:1].expand_as(logits).clone()
    attention = logits.flatten(1).softmax(dim=-1).view_as(logits)

    def attention_fn(pooled: bool) -> torch.Tensor:
        return average_pool(attention[..., None])[..., 0] if pooled else attention

    return VideoTokens(
        features=average_pool(unpooled),
        newline=torch.randn(DIM, generator=generator),
        unpooled_fn=lambda: unpooled,
        attention_fn=attention_fn,
        pool_fn=average_pool,
    )


def build(name: str, budget: dict[str, str]) -> Reducer:
    params = dict(budget)
    if any(spec.name == "allow_random_weights" for spec in available()[name].params):
        params["allow_random_weights"] = "true"
    return build_reducer(name, params)


def layer_view(span: int, *, degenerate: bool = False) -> LayerView:
    """A sequence of 5 prefix tokens, ``span`` visual tokens and 7 text tokens at layer K."""
    generator = torch.Generator().manual_seed(1)
    length, heads = 5 + span + 7, 2
    hidden = torch.zeros(length, DIM) if degenerate else torch.randn(length, DIM, generator=generator)
    logits = torch.zeros(heads, length) if degenerate else torch.randn(heads, length, generator=generator)
    attention = logits.softmax(dim=-1)
    return LayerView(hidden, (5, 5 + span), attention, layer=1, num_layers=LAYERS, all_query_attention_fn=lambda: attention)


def check_reduced(name: str, reducer: Reducer, video: VideoTokens) -> int:
    """Run the pre-LLM stage and check shapes, positions and finiteness; returns the visual count."""
    reduced = reducer.reduce_visual(video)
    count = reduced.embeddings.shape[0]
    assert reduced.embeddings.shape == (count, video.dim) and reduced.embeddings.dtype == video.features.dtype
    assert reduced.source_positions.shape == (count,) and reduced.source_positions.dtype == torch.long
    assert torch.isfinite(reduced.embeddings).all(), f"{name} produced NaN/inf"
    positions = reduced.source_positions
    newline_slot = video.grid_token_count
    assert ((positions >= -1) & (positions <= newline_slot)).all(), f"{name}: position outside the default layout"
    at_newline = (positions == newline_slot).nonzero().flatten()
    assert at_newline.numel() <= 1
    if at_newline.numel():
        assert torch.equal(reduced.embeddings[at_newline[0]], video.newline), f"{name}: the newline slot holds another token"
    grid = positions[(positions >= 0) & (positions < newline_slot)]
    assert grid.unique().numel() == grid.numel(), f"{name}: two tokens stand for the same grid token"
    if name in NO_GRID_ORIGIN:
        assert (positions[positions != newline_slot] == -1).all()
    else:
        assert (positions >= 0).all(), f"{name}: -1 positions from a method whose tokens come from the grid"
    json.dumps(reduced.info)  # the sample log and the row carry it
    return count - at_newline.numel()


def check_decision(name: str, decision: InLLMDecision, span: int) -> int:
    keep = decision.keep
    assert keep.dtype == torch.long and keep.ndim == 1 and keep.numel() >= 1
    assert (keep[1:] > keep[:-1]).all(), f"{name}: kept indices not ascending and distinct"
    assert 0 <= int(keep[0]) and int(keep[-1]) < span
    if decision.hidden is not None:
        assert decision.hidden.shape == (keep.numel(), DIM)
        assert torch.isfinite(decision.hidden).all(), f"{name}: merged hidden states hold NaN/inf"
    return keep.numel()


METHODS = sorted(available())


def test_every_builtin_method_is_under_contract():
    assert set(COUNT_RULES) <= set(METHODS)
    assert {"full", "uniform_pool", "fastv", "divprune", "holitom", "vqtoken", "token_dynamics"} <= set(METHODS)


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()) or "default")
@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, budget):
    if budget and not available()[name].takes_budget:
        pytest.skip(f"{name} takes no budget")
    reducer = build(name, budget)
    video = synthetic_video()
    schedule = reducer.token_schedule(video.grid_token_count, LAYERS)
    priced = paper_flops(reducer, DIMS, FRAMES)
    assert priced["schedule"] == [{"layers": layers, "tokens": tokens} for layers, tokens in schedule]
    assert priced["visual_tokens_full"] == video.grid_token_count
    assert sum(layers for layers, _ in schedule) == LAYERS
    assert all(tokens >= 1 for _, tokens in schedule)
    assert [tokens for _, tokens in schedule] == sorted((tokens for _, tokens in schedule), reverse=True)

    count = check_reduced(name, reducer, video)
    info = reducer.reduce_visual(video).info
    rule = COUNT_RULES.get(name, exact)
    assert rule(reducer, video, count, schedule[0][1], info), (
        f"{name} {budget}: {count} visual tokens against {schedule[0][1]} priced ({rule.__doc__.splitlines()[0]})"
    )

    layer = reducer.in_llm_layer(LAYERS)
    if available()[name].stage in (STAGE_IN_LLM, STAGE_BOTH) and layer is not None:
        assert len(schedule) == 2 and schedule[0][0] == layer, "the schedule switches at the method's layer K"
        span = schedule[0][1]
        kept = check_decision(name, reducer.reduce_in_llm(layer_view(span)), span)
        assert kept == schedule[1][1], f"{name}: kept {kept} of {span} in the LLM, the schedule prices {schedule[1][1]}"
    else:
        assert len(schedule) == 1, f"{name} acts only before the LLM, so its schedule has one stage"


@pytest.mark.parametrize("kind", ["zeros", "identical", "single_frame"])
@pytest.mark.parametrize("name", METHODS)
def test_degenerate_input_gives_finite_tokens(name, kind):
    reducer = build(name, {"retain": "0.25"} if available()[name].takes_budget else {})
    video = synthetic_video("random", frames=1) if kind == "single_frame" else synthetic_video(kind)
    count = check_reduced(name, reducer, video)
    assert 1 <= count <= video.grid_token_count
    layer = reducer.in_llm_layer(LAYERS)
    if layer is not None:
        span = max(count, 1)
        check_decision(name, reducer.reduce_in_llm(layer_view(span, degenerate=kind != "single_frame")), span)


def test_holitom_bound_is_tight_enough_to_fail():
    """The HoliTom rule is not vacuous: a count at the bound is refused."""
    reducer = build("holitom", {"retain": "0.25"})
    video = synthetic_video()
    info = reducer.reduce_visual(video).info
    bound = math.ceil(0.25 * video.grid_token_count + info["windows"] / 2 + video.num_frames)
    assert not holitom_bound(reducer, video, bound, 0, {**info, "outer_tokens": bound})
