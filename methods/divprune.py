"""DivPrune: diversity-based visual token pruning (Alvar et al., CVPR 2025).

Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025.
Official code: github.com/vbdi/divprune at 799e2d950aa01ba7860907f5a6d86061f885dca6,
``LLaVA/llava/model/llava_arch.py``:

* lines 147-150 ``pairwise_cosine_similarity``: rows divided by their norm (no eps), one
  N x N matmul;
* lines 152-171 ``DivPrune``: ``k = int(round(ratio * N))``; distance ``C = 1 - cos``; step 0
  picks the argmax of every column's second-smallest distance (the most isolated token);
  step i picks the argmax over columns of the minimum over the already selected rows
  (greedy max-min / farthest-point selection); ``torch.argmax`` takes the first index on ties;
* lines 365-381 (call site, ``LAYER_INDEX=0``): the selected indices are sorted before the
  kept tokens are gathered, so kept tokens keep their original relative order and are
  renumbered contiguously.

What is faithful here: the same k, the same distance values and the same selections, in the
same order, as the official loop (the golden files in ``shared/golden`` are matched exactly).
The selection is computed in the similarity domain: ``fl(1 - s)`` is monotone non-increasing in
``s``, so the second-smallest distance of a column is ``fl(1 - second-largest similarity)``
and the running minimum distance is ``fl(1 - running maximum similarity)``, bit for bit. That
lets the method do one N x N matmul and a single masked pass over it, then an O(M*N)
running-extremum loop instead of the official O(M^2 N) re-reduction of all selected rows.

What differs, and why:

* Zero-norm rows are divided by 1 instead of 0 (a zero token is at distance 1 from
  everything) so they give no NaN; every other row is divided exactly as in the official code.
* An already selected token is masked out. The official code does not mask, so a selected
  token (score ``C[j, j]`` ~ 1e-7) can be picked again only when every remaining token is a
  duplicate of a selected one. The selections are identical whenever the official ones are
  distinct; here they are always distinct.
* Selection runs in float32 whatever the feature dtype (the official code runs in the model's
  fp16, where cosine distances are too coarse for stable argmax choices).
* Video: the natural port is one global selection over all T*H*W pooled tokens
  (``scope=global``, default); ``scope=frame`` selects per frame with the budget split evenly
  across frames (the first ``k mod T`` frames get one more token). ``order=sorted`` (default)
  reproduces the released splice; ``order=greedy`` keeps the selection order, as the paper's
  analysis does. The model's newline token is appended once after the kept tokens, as
  LLaVA-OneVision does for video.
"""

from __future__ import annotations

from typing import Any

import torch

from tokbench.methods.base import (
    STAGE_PRE_LLM,
    Budget,
    BudgetError,
    MethodError,
    ParamSpec,
    ReducedTokens,
    Reducer,
    VideoTokens,
    append_newline,
    l2_normalize,
)
from tokbench.methods.registry import register

DEFAULT_RETAIN = 0.1


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of the rows of [N, D] (or per batch of [B, N, D]): one matmul."""
    xn = l2_normalize(x)
    if xn.ndim == 2:
        return torch.mm(xn, xn.t())
    return torch.bmm(xn, xn.transpose(1, 2))


def second_largest_per_column(sim: torch.Tensor) -> torch.Tensor:
    """Second-largest value of every column of [B, N, N] (with multiplicity), in one pass.

    The diagonal (self-similarity, ~1) is normally a column's maximum, so the answer is the
    largest off-diagonal entry. Columns where an off-diagonal entry beats the diagonal (near
    duplicates, rounding) are recomputed exactly with a top-2 over the whole column.
    ``sim`` is modified temporarily and restored.
    """
    diagonal = sim.diagonal(dim1=1, dim2=2)
    saved = diagonal.clone()
    diagonal.fill_(-torch.inf)
    best_off_diagonal = sim.amax(dim=1)
    diagonal.copy_(saved)
    second = best_off_diagonal
    batch, column = torch.nonzero(best_off_diagonal > saved, as_tuple=True)
    if batch.numel():
        columns = sim[batch, :, column]
        second = second.clone()
        second[batch, column] = columns.topk(2, dim=1).values[:, 1]
    return second


def greedy_max_min(sim: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max-min selection of ``k`` rows per batch from similarities [B, N, N].

    Returns [B, k] indices in selection order. Step 0: argmax of ``1 - second-largest
    similarity`` per column; step i: argmax of ``1 - max similarity to the selected set``;
    first index on ties; selected tokens are masked out. O(k*N) after the one pass over ``sim``.
    """
    batch, n = int(sim.shape[0]), int(sim.shape[1])
    if not 1 <= k <= n:
        raise BudgetError(f"DivPrune cannot keep {k} of {n} tokens")
    rows = torch.arange(batch, device=sim.device)
    selected = torch.empty(batch, k, dtype=torch.long, device=sim.device)
    if n == 1:
        selected.zero_()
        return selected
    scores = 1.0 - second_largest_per_column(sim)
    nearest = torch.full((batch, n), -torch.inf, dtype=sim.dtype, device=sim.device)
    for step in range(k):
        pick = scores.argmax(dim=1)
        selected[:, step] = pick
        torch.maximum(nearest, sim[rows, pick], out=nearest)
        nearest[rows, pick] = torch.inf
        scores = 1.0 - nearest
    return selected


def divprune_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Official DivPrune selection of ``k`` of the N rows of ``features`` [N, D], greedy order."""
    sim = cosine_similarity_matrix(features.float())
    return greedy_max_min(sim.unsqueeze(0), k)[0]


def frame_budgets(k: int, frames: int) -> list[int]:
    """``k`` tokens split evenly over ``frames``; the first ``k mod frames`` frames get one more."""
    base, extra = divmod(k, frames)
    return [base + (1 if t < extra else 0) for t in range(frames)]


def divprune_select_per_frame(frames: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Per-frame DivPrune on [T, P, D]: one batched selection, the budget split over frames.

    Returns, per frame, the selected within-frame indices in selection order.
    """
    budgets = frame_budgets(k, int(frames.shape[0]))
    sim = cosine_similarity_matrix(frames.float())
    picked = greedy_max_min(sim, max(budgets))
    return [picked[t, :kt] for t, kt in enumerate(budgets)]


def select_indices(features: torch.Tensor, k: int, scope: str, order: str) -> torch.Tensor:
    """Flat frame-major indices kept from a [T, H, W, D] grid, in the requested order."""
    t, h, w, d = (int(size) for size in features.shape)
    if scope == "global":
        chosen = divprune_select(features.reshape(-1, d), k)
    else:
        per_frame = divprune_select_per_frame(features.reshape(t, h * w, d), k)
        chosen = torch.cat([idx + frame * h * w for frame, idx in enumerate(per_frame)])
    return chosen.sort().values if order == "sorted" else chosen


@register("divprune")
class DivPrune(Reducer):
    """Keep the most diverse visual tokens (greedy max-min cosine distance) before the LLM."""

    stage = STAGE_PRE_LLM
    summary = "DivPrune (CVPR 2025): greedy max-min diversity selection of pooled visual tokens"
    position_policy = "compact"
    params = (
        ParamSpec("scope", str, "global", "select over all T*H*W tokens (global) or per frame", ("global", "frame")),
        ParamSpec(
            "order",
            str,
            "sorted",
            "kept tokens in grid order (sorted, as released) or selection order",
            ("sorted", "greedy"),
        ),
    )

    def validate(self) -> None:
        if not self.budget.is_set:
            self.budget = Budget(retain=DEFAULT_RETAIN)

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        flat = video.flat()
        if not torch.isfinite(flat).all():
            raise MethodError("divprune: visual features contain NaN or inf")
        k = self.budget.count(int(flat.shape[0]))
        indices = select_indices(video.features, k, self.values["scope"], self.values["order"])
        embeddings, positions = append_newline(video, flat[indices], indices)
        info: dict[str, Any] = {"kept": k, "scope": self.values["scope"], "order": self.values["order"]}
        return ReducedTokens(embeddings, positions, info)
