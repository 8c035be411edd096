"""Attention statistics computed without the full attention tensor, and their block sizing.

The engine's all-query attention (FastV ``score=all_queries``) and the adapters' vision-encoder
attention (HoliTom; ``received_attention``, LLaVA-OV and Qwen2.5-VL alike) reduce a softmax over
keys to a per-key sum over queries. Both walk the
queries in blocks whose scores hold at most ``BLOCK_ELEMENTS`` numbers, so their memory stays
bounded at any video length instead of growing with the square of the token count.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 24  # scores held at once: 64 MB in float32 (smaller blocks cost time in small matmuls)


def query_block(queries: int, elements_per_query: int, block_elements: int = BLOCK_ELEMENTS) -> int:
    """Queries per block so that one block's scores hold at most ``block_elements`` numbers."""
    return max(1, min(queries, block_elements // max(1, elements_per_query)))


def received_attention(q: torch.Tensor, k: torch.Tensor, scale: float, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Attention each key receives, mean over heads then queries: q, k [T, heads, N, hd] -> [T, N].

    HoliTom's SigLIP score (``siglip_encoder.py`` 618-622: ``attentions.mean(1).mean(1)``),
    computed in blocks of queries so that the [T, heads, N, N] attention tensor never exists.
    """
    frames, heads, tokens, _ = q.shape
    received = torch.zeros(frames, k.shape[2], dtype=torch.float32, device=q.device)
    step = query_block(tokens, frames * heads * k.shape[2], block_elements)
    for start in range(0, tokens, step):
        scores = (q[:, :, start : start + step] @ k.transpose(-1, -2)).float() * scale
        received += torch.softmax(scores, dim=-1).sum(dim=(1, 2))
    return received / (heads * tokens)
