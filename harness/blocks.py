"""Block sizing for attention statistics computed without the full attention tensor.

The engine's all-query attention (FastV ``score=all_queries``) and the adapter's vision-encoder
attention (HoliTom) reduce a softmax over keys to a per-key sum over queries. Both walk the
queries in blocks whose scores hold at most ``BLOCK_ELEMENTS`` numbers, so their memory stays
bounded at any video length instead of growing with the square of the token count.
"""

from __future__ import annotations

BLOCK_ELEMENTS = 1 << 24  # scores held at once: 64 MB in float32 (smaller blocks cost time in small matmuls)


def query_block(queries: int, elements_per_query: int, block_elements: int = BLOCK_ELEMENTS) -> int:
    """Queries per block so that one block's scores hold at most ``block_elements`` numbers."""
    return max(1, min(queries, block_elements // max(1, elements_per_query)))
