"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

Official code: pkunlp-icler/FastV, ``src/FastV/llava/.../modeling_llama.py`` (the
``use_fast_v`` branch of ``LlamaModel.forward``, commit d1659729): at layer K the visual
tokens are ranked by the attention the LAST query paid them at layer K-1, averaged over
heads, and the top ``round((1-R) * n)`` are kept for every layer >= K; kept tokens keep their
original position ids.

Faithful: last-query score averaged over heads (default), keep count n - round(R*n) (the
convention of the published 9.3 TFLOPs figure), original positions, pruning once at prefill
with decoding on the pruned cache. Option ``score=all_queries`` ranks by the attention each
token receives averaged over all queries, as the paper's text describes.

Deliberately different: the official code needs eager attention at layer K-1, batch 1,
hard-coded image spans and a RoPE length hack; here the engine computes layer K-1's
last-query attention from its q/k (GQA aware, any kernel) and passes the real visual span.
The span includes LLaVA-OV's video newline token, which can be pruned like visual tokens.
"""

from __future__ import annotations

from tokbench.methods.base import STAGE_IN_LLM, BudgetError, InLLMDecision, LayerView, MethodError, ParamSpec, Reducer
from tokbench.methods.registry import register


def kept_count(visual: int, prune_ratio: float) -> int:
    """Tokens FastV keeps out of ``visual``: n - round(R * n)."""
    return visual - int(round(prune_ratio * visual))


@register("fastv")
class FastV(Reducer):
    stage = STAGE_IN_LLM
    summary = "in-LLM: at layer K keep the visual tokens the last query attends to most at layer K-1"
    position_policy = "original"
    params = (
        ParamSpec("K", int, 2, "layer at whose input visual tokens are pruned (attention from layer K-1)"),
        ParamSpec("R", float, None, "fraction of visual tokens pruned at layer K (default 0.5; or give retain=/tokens=)"),
        ParamSpec("score", str, "last_query", "rank by the last query's attention or by all queries'", ("last_query", "all_queries")),
    )

    def validate(self) -> None:
        ratio = self.values["R"]
        if ratio is not None and self.budget.is_set:
            raise MethodError("fastv: give R= or a budget (retain=/tokens=), not both")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise BudgetError(f"fastv: R={ratio} must be in [0, 1)")
        if self.values["K"] < 1:
            raise MethodError(f"fastv: K={self.values['K']} must be at least 1 (the score comes from layer K-1)")

    def prune_ratio(self, visual: int) -> float:
        if self.values["R"] is not None:
            return self.values["R"]
        if self.budget.is_set:
            return 1.0 - self.budget.ratio_of(visual)
        return 0.5

    def keep_count(self, visual: int) -> int:
        if self.budget.tokens is not None:
            self.budget.count(visual)
            return self.budget.tokens
        kept = kept_count(visual, self.prune_ratio(visual))
        if kept < 1:
            raise BudgetError(f"fastv keeps no token out of {visual}")
        return kept

    def in_llm_layer(self, num_layers: int) -> int:
        if self.values["K"] >= num_layers:
            raise MethodError(f"fastv: K={self.values['K']} is beyond the LLM's {num_layers} layers")
        return self.values["K"]

    def reduce_in_llm(self, view: LayerView) -> InLLMDecision:
        start, end = view.visual_span
        attention = view.last_query_attention if self.values["score"] == "last_query" else view.all_query_attention()
        scores = attention.mean(dim=0)[start:end]
        keep = scores.topk(self.keep_count(end - start)).indices.sort().values
        return InLLMDecision(keep=keep)

    def token_schedule(self, visual_tokens: int, num_layers: int) -> list[tuple[int, int]]:
        layer = self.in_llm_layer(num_layers)
        return [(layer, visual_tokens), (num_layers - layer, self.keep_count(visual_tokens))]
