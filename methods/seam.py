"""The seam between methods and models: the types both sides exchange, and their errors.

An adapter (``harness/models/``) turns a model's vision output into ``VideoTokens``; a method
(``methods/``) returns ``ReducedTokens`` before the LLM, or an ``InLLMDecision`` on a
``LayerView`` inside it. Both sides import this module, which depends on torch only, so a
model adapter never imports a method and a method never sees a model. ``tokbench.methods.base``
re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


NEWLINE_LAYOUTS = ("one_token", "grid")
"""Where a model puts its newline embedding in the default video layout: ``one_token`` once after
the whole video (LLaVA-OV in Hugging Face), ``grid`` after every row of every frame (LLaVA-Video
as trained and evaluated by lmms-eval's ``llava_vid``; LLaVA-NeXT ``add_token_per_grid``)."""


class MethodError(ValueError):
    """A method was asked for something it cannot do (bad parameter, unservable model)."""


class BudgetError(MethodError):
    """A budget that leaves no token or asks for more tokens than exist."""


@dataclass
class VideoTokens:
    """One video's projected visual features on their grid, plus extras computed on request.

    ``features`` is the grid the model feeds by default ([T, H, W, D]; for LLaVA-OneVision the
    bilinearly pooled 14x14 grid per frame; for Qwen2.5-VL the 2x2-merged grid per frame
    pair). ``newline`` is the model's newline embedding (None: the model has none), placed as
    ``newline_layout`` says: once after the video (``one_token``) or after every grid row
    (``grid``). Newlines are layout, not visual tokens: methods reduce ``features`` and call
    ``append_newline``, which lays the newlines out again for what they kept. The un-pooled
    grid and the vision encoder's attention are produced lazily by the adapter: asking for them costs an extra computation only for the
    methods that need them. ``checkpoint_dir`` is the model's local folder, for methods that
    load learned weights of their own from it (VQToken's attention module).
    """

    features: torch.Tensor
    newline: torch.Tensor | None = None
    unpooled_fn: Callable[[], torch.Tensor] | None = None
    attention_fn: Callable[[bool], torch.Tensor] | None = None
    pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    checkpoint_dir: str | None = None
    newline_layout: str = "one_token"
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

    def __post_init__(self) -> None:
        if self.newline_layout not in NEWLINE_LAYOUTS:
            raise MethodError(f"newline layout {self.newline_layout!r} must be one of {list(NEWLINE_LAYOUTS)}")

    @property
    def default_token_count(self) -> int:
        """Visual tokens the model feeds without reduction (grid tokens plus the newlines)."""
        return self.grid_token_count + self.newline_count

    @property
    def newline_count(self) -> int:
        """Newlines in the default layout: 0 without a newline, 1 (one_token) or T*H (grid)."""
        if self.newline is None:
            return 0
        return self.num_frames * self.grid[0] if self.newline_layout == "grid" else 1

    def layout_offsets(self, sources: torch.Tensor) -> torch.Tensor:
        """Offsets in the default fed layout of source indices (see ``ReducedTokens``).

        ``one_token``: the identity. ``grid``: grid token s sits at row(s) * (W + 1) + s % W and
        the newline of row k (source T*H*W + k) at k * (W + 1) + W.
        """
        if self.newline_layout != "grid" or self.newline is None:
            return sources
        width, grid_tokens = self.grid[1], self.grid_token_count
        is_newline = sources >= grid_tokens
        rows = torch.where(is_newline, sources - grid_tokens, sources // width)
        cols = torch.where(is_newline, torch.full_like(sources, width), sources % width)
        return rows * (width + 1) + cols

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
        """Mean attention each patch receives in the vision encoder (the layer is the adapter's:
        LLaVA-OV's selected SigLIP layer, Qwen2.5-VL's last full-attention block).

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
    entries) use -1. In the ``grid`` newline layout the newline after row k (k = t * H + r)
    is T*H*W + k. ``info`` carries method metadata for the row (e.g. the chosen K).
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
