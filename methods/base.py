"""The reducer interface: what every visual-token reduction method implements.

A method sees tokens, never a model (docs/adding_a_method.md, "The seam"; the project's design
notes, ../shared/DESIGN.md, are not shipped with the repository). It acts at one or both of
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

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from tokbench.methods.seam import (
    BudgetError,
    InLLMDecision,
    LayerView,
    MethodError,
    ReducedTokens,
    VideoTokens,
)

__all__ = ["BudgetError", "InLLMDecision", "LayerView", "MethodError", "ReducedTokens", "VideoTokens"]  # re-exported

STAGE_NONE = "none"
STAGE_PRE_LLM = "pre_llm"
STAGE_IN_LLM = "in_llm"
STAGE_BOTH = "pre_llm+in_llm"

POSITION_POLICIES = ("compact", "original")


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
    """The model's default token sequence: grid tokens frame-major with the newline(s) laid out."""
    flat = video.flat()
    positions = torch.arange(flat.shape[0], dtype=torch.long, device=flat.device)
    return ReducedTokens(*append_newline(video, flat, positions))


def append_newline(video: VideoTokens, embeddings: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay the model's newline out over a (reduced) video, as the model does for video.

    ``one_token``: one newline after the video (LLaVA-OV). ``grid``: a newline after the last
    token of every run of tokens from the same grid row, so rows without a kept token get none
    (LLaVA-NeXT ``add_token_per_grid`` on the full grid; HoliTom's ``add_newline_token`` on a
    reduced one). Tokens without a grid origin (source -1) have no row: when any is present the
    ``grid`` layout falls back to one newline after the video.
    """
    if video.newline is None:
        return embeddings, positions
    newline = video.newline.to(embeddings.dtype)
    if video.newline_layout == "grid" and positions.numel() and bool((positions >= 0).all()):
        return _insert_row_newlines(video, embeddings, positions, newline)
    embeddings = torch.cat([embeddings, newline[None]], dim=0)
    positions = torch.cat([positions, positions.new_tensor([video.grid_token_count])])
    return embeddings, positions


def _insert_row_newlines(video: VideoTokens, embeddings: torch.Tensor, positions: torch.Tensor, newline: torch.Tensor):
    rows = positions // video.grid[1]
    ends = torch.ones_like(rows, dtype=torch.bool)
    ends[:-1] = rows[1:] != rows[:-1]
    slots = torch.arange(rows.numel(), device=rows.device) + torch.cumsum(ends.long(), 0) - ends.long()
    count = rows.numel() + int(ends.sum())
    out = embeddings.new_empty(count, embeddings.shape[1])
    sources = positions.new_empty(count)
    out[slots] = embeddings
    sources[slots] = positions
    newline_slots = slots[ends] + 1
    out[newline_slots] = newline
    sources[newline_slots] = video.grid_token_count + rows[ends]
    return out, sources


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; zero rows stay zero instead of becoming NaN."""
    norms = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def python_round(x: float) -> int:
    """Python's round (half to even), the rounding the official codes use.

    ``float()`` first: under fvcore's jit trace, shape arithmetic yields 0-d tensors.
    """
    return int(round(float(x)))

