"""Training on random subsets of the video tokens, so the embedded model can answer from whatever
tokens a reducer leaves it.

A model trained only on all 784 video tokens learns to lean on their redundancy: an earlier
checkpoint (runs 1-3 in embedded/README.md) answered at chance with any reducer at 1% of the tokens, even where the
kept tokens held the answer. In a "subset" step (``--subset-share`` of the
question-answering steps, from step ``--subset-from`` on) each video keeps a random ``keep``
fraction of its tokens, drawn log-uniformly from ``--subset-keep LOW HIGH``, in their original
order and followed by the video newline, as a pre-LLM reducer hands them over (compact
positions, the engine's default). The subsets are uniform over all tokens, not chosen by any
method, so no reducer is favoured: a reducer still scores only as well as the tokens it keeps
allow.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def check_keep_range(low: float, high: float) -> None:
    """Refuse a kept-fraction range outside 0 < low <= high <= 1."""
    if not 0 < low <= high <= 1:
        raise ValueError(f"subset keep fractions must satisfy 0 < low <= high <= 1, got {low}, {high}")


def is_subset_step(share: float, first_step: int, step: int, rng: np.random.Generator) -> bool:
    """Whether training step ``step`` is a subset step: from ``first_step`` on, with probability
    ``share``. ``rng`` is drawn from only then, so earlier steps see the same samples as without subsets."""
    return bool(share) and step >= first_step and bool(rng.random() < share)


def draw_keep_count(total: int, low: float, high: float, rng: np.random.Generator) -> int:
    """How many of ``total`` tokens a subset step keeps: round(total * f), f log-uniform in [low, high], at least 1."""
    check_keep_range(low, high)
    fraction = math.exp(rng.uniform(math.log(low), math.log(high)))
    return max(1, round(total * fraction))


def random_subsets(batch: int, total: int, keep: int, rng: np.random.Generator) -> torch.Tensor:
    """``batch`` independent subsets of ``keep`` of ``total`` token indices, each ascending: [batch, keep]."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} tokens")
    rows = [np.sort(rng.choice(total, size=keep, replace=False)) for _ in range(batch)]
    return torch.from_numpy(np.stack(rows)).long()


def subset_prefix_embeds(model, head_ids: list[int], video_tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The prompt prefix with only the kept video tokens: [B, len(head) + k + 1, D].

    ``head_ids`` are the ids before the ``<video>`` token (system and user header);
    ``video_tokens`` [B, N + 1, D] are a video's tokens with LLaVA-OV's newline last (the
    projector's pooled output); ``keep`` [B, k] indexes the first N.
    """
    batch = video_tokens.shape[0]
    head = model.get_input_embeddings()(torch.tensor(head_ids)).expand(batch, -1, -1)
    kept = video_tokens.gather(1, keep[..., None].expand(-1, -1, video_tokens.shape[-1]))
    return torch.cat([head.to(kept.dtype), kept, video_tokens[:, -1:]], dim=1)
