"""The full-token baseline: no reduction. Every sweep runs it first; deltas are against it."""

from __future__ import annotations

from tokbench.methods.base import STAGE_NONE, ReducedTokens, Reducer, VideoTokens, keep_all
from tokbench.methods.registry import register


@register("full")
class Full(Reducer):
    stage = STAGE_NONE
    summary = "no reduction: every visual token of the model's default layout (the baseline)"
    takes_budget = False

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        return keep_all(video)
