"""The reducer interface: what every visual-token reduction method implements.

A method sees tokens, never a model (see DESIGN.md, "The seam"). It acts at one or both of
two stages:

* pre-LLM: ``reduce_visual(VideoTokens) -> ReducedTokens``, on the projected visual features
  laid out on their grid;
* in-LLM: ``in_llm_layer()`` names the layer K, and at layer K the engine calls
  ``reduce_in_llm(LayerView) -> InLLMDecision`` with the hidden states entering layer K and
  the last query's attention at layer K-1 over the sequence.

Parameters are declared as ``ParamSpec`` entries so that the CLI, the lmms-eval plugin and
the sweep can parse, validate and record them the same way. Budgets (``retain`` or
``tokens``) are validated by ``Budget``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

STAGE_NONE = "none"
STAGE_PRE_LLM = "pre_llm"
STAGE_IN_LLM = "in_llm"
STAGE_BOTH = "pre_llm+in_llm"

POSITION_POLICIES = ("compact", "original")


class MethodError(ValueError):
    """A method was asked for something it cannot do (bad parameter, unservable model)."""


class BudgetError(MethodError):
    """A budget that leaves no token or asks for more tokens than exist."""


@dataclass(frozen=True)
class Budget:
    """How many visual tokens a method may keep: a ratio of the default count, or a count."""

    retain: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.retain is not None and self.tokens is not None:
            raise BudgetError("give either retain= or tokens=, not both")
        if self.retain is not None and not (0.0 < float(self.retain) <= 1.0):
            raise BudgetError(f"retain={self.retain} is outside (0, 1]")
        if self.tokens is not None and int(self.tokens) < 1:
            raise BudgetError(f"tokens={self.tokens} is below 1")

    @property
    def is_set(self) -> bool:
        return self.retain is not None or self.tokens is not None

    def count(self, available: int, *, rounding: Callable[[float], int] = round) -> int:
        """Tokens to keep out of ``available``; raises if the budget is impossible."""
        available = int(available)
        if self.tokens is not None:
            if self.tokens > available:
                raise BudgetError(f"tokens={self.tokens} exceeds the {available} visual tokens available")
            return int(self.tokens)
        ratio = 1.0 if self.retain is None else float(self.retain)
        kept = int(rounding(ratio * available))
        if kept < 1:
            raise BudgetError(f"retain={ratio} keeps no token out of {available}")
        return min(kept, available)

    def ratio_of(self, available: int) -> float:
        """The budget as a ratio of ``available`` tokens (a token budget is converted)."""
        available = int(available)
        if self.tokens is not None:
            if self.tokens > available:
                raise BudgetError(f"tokens={self.tokens} exceeds the {available} visual tokens available")
            return self.tokens / available
        return 1.0 if self.retain is None else float(self.retain)

    def describe(self) -> str:
        if self.tokens is not None:
            return f"tokens={self.tokens}"
        if self.retain is not None:
            return f"retain={self.retain:g}"
        return "all"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method accepts: its type, default and meaning."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    def parse(self, raw: Any) -> Any:
        if raw is None:
            return None
        if self.type is bool and isinstance(raw, str):
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise MethodError(f"parameter {self.name}={raw!r} is not a boolean")
            value: Any = low in ("true", "1", "yes")
        elif self.type is int and isinstance(raw, str):
            try:
                value = int(raw)
            except ValueError:
                if raw.strip().lower() == "auto":
                    value = "auto"
                else:
                    raise MethodError(f"parameter {self.name}={raw!r} is not an integer") from None
        elif self.type is float and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise MethodError(f"parameter {self.name}={raw!r} is not a number") from None
        else:
            value = raw
        if self.choices is not None and value not in self.choices:
            raise MethodError(f"parameter {self.name}={value!r} must be one of {list(self.choices)}")
        return value


@dataclass
class VideoTokens:
    """One video's projected visual features on their grid, plus extras computed on request.

    ``features`` is the grid the model feeds by default ([T, H, W, D]; for LLaVA-OneVision the
    bilinearly pooled 14x14 grid). ``newline`` is the model's newline embedding, appended once
    after the video by default. The un-pooled grid and the vision encoder's attention are
    produced lazily by the adapter: asking for them costs an extra computation only for the
    methods that need them. ``checkpoint_dir`` is the model's local folder, for methods that
    load learned weights of their own from it (VQToken's attention module).
    """

    features: torch.Tensor
    newline: torch.Tensor | None = None
    unpooled_fn: Callable[[], torch.Tensor] | None = None
    attention_fn: Callable[[bool], torch.Tensor] | None = None
    pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    checkpoint_dir: str | None = None
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.features.shape[1]), int(self.features.shape[2])

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def default_token_count(self) -> int:
        """Visual tokens the model feeds without reduction (grid tokens plus the newline)."""
        t, (h, w) = self.num_frames, self.grid
        return t * h * w + (1 if self.newline is not None else 0)

    @property
    def grid_token_count(self) -> int:
        t, (h, w) = self.num_frames, self.grid
        return t * h * w

    def flat(self) -> torch.Tensor:
        """Grid tokens flattened frame-major, row-major: [T*H*W, D]."""
        return self.features.reshape(-1, self.dim)

    def unpooled(self) -> torch.Tensor:
        """The grid before the model's own pooling: [T, H0, W0, D]."""
        if "unpooled" not in self._cache:
            if self.unpooled_fn is None:
                raise MethodError("this model does not expose an un-pooled visual grid")
            self._cache["unpooled"] = self.unpooled_fn()
        return self._cache["unpooled"]

    def encoder_attention(self, pooled: bool = True) -> torch.Tensor:
        """Mean attention each patch receives in the vision encoder's last used layer.

        Returns [T, H, W] on the pooled grid (pooled like the features) or [T, H0, W0].
        """
        key = f"attention_pooled={pooled}"
        if key not in self._cache:
            if self.attention_fn is None:
                raise MethodError(
                    "this model does not expose vision-encoder attention (needs an eager-attention "
                    "vision tower with output_attentions)"
                )
            self._cache[key] = self.attention_fn(pooled)
        return self._cache[key]

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """Apply the model's own spatial pooling to an un-pooled [T, H0, W0, C] grid."""
        if self.pool_fn is None:
            raise MethodError("this model does not expose its spatial pooling")
        return self.pool_fn(grid)


@dataclass
class ReducedTokens:
    """What a pre-LLM method hands to the LLM.

    ``embeddings`` [M, D] replace the video's tokens (newline included if the method keeps
    one). ``source_positions`` [M] gives, per token, the index in the default token layout
    (frame-major grid tokens 0..T*H*W-1, then the newline at T*H*W) of the token it stands
    for; merged tokens name their representative; tokens with no grid origin (codebook
    entries) use -1. ``info`` carries method metadata for the row (e.g. the chosen K).
    """

    embeddings: torch.Tensor
    source_positions: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2:
            raise MethodError(f"reduced embeddings must be [M, D], got {tuple(self.embeddings.shape)}")
        if self.source_positions.shape != (self.embeddings.shape[0],):
            raise MethodError("source_positions must hold one entry per reduced token")
        if self.embeddings.shape[0] < 1:
            raise BudgetError("the reduction left no visual token")

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class LayerView:
    """What the engine shows an in-LLM method at layer K (one sequence, no batch axis).

    ``hidden`` [S, D] is the input of layer K. ``visual_span`` is the [start, end) range of
    visual tokens in the current sequence. ``last_query_attention`` [H, S] is the attention
    probability the last query pays every key at layer K-1 (per head, computed by the engine
    from that layer's q/k so it does not depend on the attention kernel).
    ``all_query_attention()`` gives [H, S]: the attention each key receives averaged over all
    queries at layer K-1 (computed on request; it costs an S x S product).
    """

    hidden: torch.Tensor
    visual_span: tuple[int, int]
    last_query_attention: torch.Tensor
    layer: int
    num_layers: int
    all_query_attention_fn: Callable[[], torch.Tensor] | None = None

    @property
    def visual_count(self) -> int:
        return self.visual_span[1] - self.visual_span[0]

    def all_query_attention(self) -> torch.Tensor:
        if self.all_query_attention_fn is None:
            raise MethodError("the engine did not provide all-query attention")
        return self.all_query_attention_fn()


@dataclass
class InLLMDecision:
    """An in-LLM method's answer: which visual tokens (indices into the span) survive.

    ``keep`` is ascending. ``hidden`` optionally replaces the kept tokens' hidden states
    (merging dropped tokens into kept ones); None keeps them as they are.
    """

    keep: torch.Tensor
    hidden: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Reducer:
    """Base class of every method. Subclass, declare, and register with ``@register``.

    Class attributes to declare:
      name         registry name (set by ``@register``)
      stage        STAGE_PRE_LLM, STAGE_IN_LLM, STAGE_BOTH or STAGE_NONE
      summary      one line for ``tokbench methods``
      params       tuple of ParamSpec (method-specific; ``retain``/``tokens`` are common)
      takes_budget whether retain=/tokens= apply
      position_policy  default position-id policy after reduction ("compact" or "original")
      needs_unpooled   whether the method works on the un-pooled grid (replaces pooling)
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = STAGE_NONE
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    takes_budget: ClassVar[bool] = True
    position_policy: ClassVar[str] = "compact"
    needs_unpooled: ClassVar[bool] = False

    def __init__(self, budget: Budget | None = None, position_policy: str | None = None, **params: Any):
        self.budget = budget or Budget()
        if self.budget.is_set and not self.takes_budget:
            raise MethodError(f"method {self.name!r} takes no budget (got {self.budget.describe()})")
        policy = position_policy or type(self).position_policy
        if policy not in POSITION_POLICIES:
            raise MethodError(f"position policy {policy!r} must be one of {list(POSITION_POLICIES)}")
        self.position_policy_used = policy
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise MethodError(f"method {self.name!r} has no parameter {', '.join(unknown)} (known: {names})")
        self.values: dict[str, Any] = {}
        for spec in self.params:
            raw = params.get(spec.name)
            self.values[spec.name] = spec.default if raw is None else spec.parse(raw)
        self.validate()

    # -- hooks a method overrides ------------------------------------------------------
    def validate(self) -> None:
        """Check parameter combinations; raise MethodError with a one-line reason."""

    def check_checkpoint(self, checkpoint_dir: str | None) -> None:
        """Refuse, before any model work, a checkpoint this method cannot serve (e.g. without the
        learned weights it needs); called once when a runner is built. The default accepts all."""

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        """Pre-LLM reduction. The default keeps every token (used by in-LLM-only methods)."""
        return keep_all(video)

    def in_llm_layer(self, num_layers: int) -> int | None:
        """The decoder layer K at whose input ``reduce_in_llm`` runs, or None."""
        return None

    def reduce_in_llm(self, view: LayerView) -> InLLMDecision:
        raise MethodError(f"method {self.name!r} does not act inside the LLM")

    def token_schedule(self, visual_tokens: int, num_layers: int) -> list[tuple[int, int]]:
        """(layers, visual tokens) stages for the paper FLOPs formula, without weights.

        ``visual_tokens`` is the model's default count. The default: one stage at the
        pre-LLM budget. In-LLM methods override.
        """
        return [(num_layers, self.budget.count(visual_tokens) if self.budget.is_set else visual_tokens)]

    # -- shared helpers ------------------------------------------------------------------
    def describe_params(self) -> dict[str, Any]:
        """Everything that determines this reducer's output, for the row's ``params``."""
        out: dict[str, Any] = dict(self.values)
        if self.budget.retain is not None:
            out["retain"] = self.budget.retain
        if self.budget.tokens is not None:
            out["tokens"] = self.budget.tokens
        out["positions"] = self.position_policy_used
        return out


def keep_all(video: VideoTokens) -> ReducedTokens:
    """The model's default token sequence: grid tokens frame-major, then the newline."""
    flat = video.flat()
    positions = torch.arange(flat.shape[0], dtype=torch.long, device=flat.device)
    if video.newline is not None:
        flat = torch.cat([flat, video.newline.to(flat.dtype)[None]], dim=0)
        positions = torch.cat([positions, positions.new_tensor([video.grid_token_count])])
    return ReducedTokens(flat, positions)


def append_newline(video: VideoTokens, embeddings: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the model's newline token after a reduced video, as LLaVA-OV does for video."""
    if video.newline is None:
        return embeddings, positions
    embeddings = torch.cat([embeddings, video.newline.to(embeddings.dtype)[None]], dim=0)
    positions = torch.cat([positions, positions.new_tensor([video.grid_token_count])])
    return embeddings, positions


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; zero rows stay zero instead of becoming NaN."""
    norms = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def python_round(x: float) -> int:
    """Python's round (half to even), the rounding the official codes use.

    ``float()`` first: under fvcore's jit trace, shape arithmetic yields 0-d tensors.
    """
    return int(round(float(x)))


def ceil_int(x: float) -> int:
    return int(math.ceil(float(x)))
