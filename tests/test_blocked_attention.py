"""Attention statistics computed in blocks of queries equal the direct full-tensor computation."""

from __future__ import annotations

import math

import pytest
import torch

from tokbench.harness import engine
from tokbench.harness.blocks import BLOCK_ELEMENTS


def direct_all_query_attention(layer, hidden, cos, sin) -> torch.Tensor:
    """The full [H, S, S] causal attention, averaged over queries (the former implementation)."""
    q, k, scaling = engine._queries_keys(layer, hidden, cos, sin, slice(None))
    scores = (q.float() @ k.float().transpose(-1, -2)) * scaling
    length = scores.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)[0].mean(dim=1)


@pytest.mark.parametrize("queries_per_block", [1, 3, 7, None])
def test_all_query_attention_in_blocks_equals_direct(tiny_adapter, queries_per_block):
    stack = tiny_adapter.decoder()
    generator = torch.Generator().manual_seed(0)
    length = 37
    hidden = torch.randn(1, length, stack.layers[0].self_attn.config.hidden_size, generator=generator)
    positions = torch.arange(length)[None]
    cos, sin = stack.rotary(hidden, positions)
    layer = stack.layers[1]
    heads = layer.self_attn.config.num_attention_heads
    block_elements = BLOCK_ELEMENTS if queries_per_block is None else queries_per_block * heads * length
    with torch.no_grad():
        blocked = engine.all_query_attention(layer, hidden, cos, sin, block_elements=block_elements)
        direct = direct_all_query_attention(layer, hidden, cos, sin)
    assert blocked.shape == (heads, length)
    torch.testing.assert_close(blocked, direct, rtol=1e-5, atol=1e-7)


def direct_encoder_attention(adapter, layer_input) -> torch.Tensor:
    """The full [T, heads, N, N] float32 attention of the selected layer, mean over heads then queries."""
    tower = adapter.model.model.vision_tower
    layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
    block = layers[adapter._selected_layer(len(layers) + 1) - 1]
    attn = block.self_attn
    x = block.layer_norm1(layer_input)
    frames, tokens, _ = x.shape
    q = attn.q_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)
    side = math.isqrt(tokens)
    return probs.mean(dim=1).mean(dim=1).view(frames, side, side)


@pytest.mark.parametrize("queries_per_block", [1, 5, None])
def test_encoder_attention_in_blocks_equals_direct(tiny_adapter, frames, queries_per_block):
    pixels = tiny_adapter.pixel_values(frames)
    with torch.no_grad():
        hidden = tiny_adapter.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        layer_input = hidden[tiny_adapter._selected_layer(len(hidden)) - 1]
        frames_count, tokens = layer_input.shape[:2]
        heads = tiny_adapter.config.vision_config.num_attention_heads
        block_elements = BLOCK_ELEMENTS if queries_per_block is None else queries_per_block * frames_count * heads * tokens
        blocked = tiny_adapter._encoder_attention(layer_input, False, block_elements=block_elements)
        direct = direct_encoder_attention(tiny_adapter, layer_input)
        # what HoliTom reads: the adapter's own attention on the pooled grid
        pooled = tiny_adapter.encode_video(pixels).encoder_attention(pooled=True)
    torch.testing.assert_close(blocked, direct, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pooled, tiny_adapter.pool(direct[..., None])[..., 0], rtol=1e-5, atol=1e-7)
