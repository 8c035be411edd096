"""The engine: prefill with a reduction plan, then greedy decoding on the reduced KV cache.

It is the only place that runs decoder layers. Pre-LLM reductions arrive as shorter prompt
embeddings (the adapter splices them). An in-LLM plan names layer K: the engine computes
layer K-1's attention of the last query from that layer's own q/k projections (rotary
applied, GQA heads expanded), so the score does not depend on the attention kernel (SDPA,
flash, eager), then at the input of layer K hands the method a ``LayerView`` and applies its
``InLLMDecision``: dropped tokens leave the sequence for layers >= K, kept tokens keep their
position ids, and (if given) merged hidden states replace the kept ones. Layers < K keep
their full KV cache, as FastV's own implementation does; decoding attends to what each
layer cached.

Position ids are the adapter's: [1, S] (1-D rotary) or [3, 1, S] (Qwen2.5-VL's M-RoPE); the
stack's own rotary turns either into the (cos, sin) the layers and the last-query score use,
so the score is the model's own attention (multimodal rotary included). Decoding continues
one past the largest prefill position, as Hugging Face's ``rope_deltas`` do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from tokbench.harness.blocks import BLOCK_ELEMENTS, query_block
from tokbench.harness.models.protocol import DecoderStack
from tokbench.methods.base import LayerView, MethodError, Reducer


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [vocab] for the last position
    cache: DynamicCache | None
    next_position: int
    layer_visual_counts: list[int]
    info: dict = field(default_factory=dict)


@dataclass
class Generation:
    token_ids: list[int]
    prefill: PrefillResult
    decode_seconds: float
    decode_steps: int

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens per second after the first (None when only one token was produced)."""
        if not self.decode_steps or self.decode_seconds <= 0:
            return None
        return self.decode_steps / self.decode_seconds


def _rotary(q_or_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q_or_k * cos + rotate_half(q_or_k) * sin


def _queries_keys(layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, query_slice: slice):
    """Post-rotary queries [1, Hq, Q, hd] and GQA-expanded keys [1, Hq, S, hd] of a layer."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    q = attn.q_proj(x[:, query_slice]).view(1, -1, attn.config.num_attention_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, -1, attn.config.num_key_value_heads, head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = _rotary(q, cos[:, query_slice], sin[:, query_slice])
    k = _rotary(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    return q, k.repeat_interleave(groups, dim=1), attn.scaling


def last_query_attention(layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of the last query over every key, per head: [H, S]."""
    q, k, scaling = _queries_keys(layer, hidden, cos, sin, slice(-1, None))
    scores = (q.float() @ k.float().transpose(-1, -2)) * scaling
    return torch.softmax(scores, dim=-1)[0, :, 0]


def all_query_attention(
    layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, block_elements: int = BLOCK_ELEMENTS
) -> torch.Tensor:
    """Causal attention each key receives, averaged over all queries, per head: [H, S].

    Computed in blocks of queries (each block only against the keys it may see), so memory is
    bounded by ``block_elements`` scores instead of the H x S x S attention.
    """
    q, k, scaling = _queries_keys(layer, hidden, cos, sin, slice(None))
    q, k = q[0].float(), k[0].float()  # [H, S, hd]
    heads, length = q.shape[0], q.shape[1]
    received = torch.zeros(heads, length, dtype=torch.float32, device=q.device)
    step = query_block(length, heads * length, block_elements)
    for start in range(0, length, step):
        end = min(start + step, length)
        scores = (q[:, start:end] @ k[:, :end].transpose(-1, -2)) * scaling  # [H, B, end]
        rows = torch.arange(start, end, device=q.device)[:, None]
        scores.masked_fill_(torch.arange(end, device=q.device)[None, :] > rows, float("-inf"))
        received[:, :end] += torch.softmax(scores, dim=-1).sum(dim=1)
    return received / length


def _causal_mask(stack: DecoderStack, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """SDPA/flash kernels take None (causal by flag); eager needs an explicit additive mask."""
    if stack.attn_implementation != "eager" or length == 1:
        return None
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def _layer_position_ids(positions: torch.Tensor) -> torch.Tensor | None:
    """What a decoder layer gets as ``position_ids`` (used by flash kernels to find packed
    sequences): 1-D positions as they are; multimodal ones none, as Hugging Face's Qwen2.5-VL
    text model passes for an unpacked sequence (the rotary already holds them)."""
    return positions if positions.ndim == 2 else None


def check_plan(reducer: Reducer, num_layers: int) -> int | None:
    layer = reducer.in_llm_layer(num_layers)
    if layer is None:
        return None
    if not 1 <= layer < num_layers:
        raise MethodError(f"method {reducer.name!r}: layer K={layer} must be in 1..{num_layers - 1} for a {num_layers}-layer LLM")
    return layer


@torch.inference_mode()
def prefill(
    stack: DecoderStack,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    visual_span: tuple[int, int],
    reducer: Reducer | None = None,
    use_cache: bool = True,
) -> PrefillResult:
    """Run every decoder layer once over the prompt, applying the reducer's in-LLM plan."""
    plan_layer = check_plan(reducer, stack.num_layers) if reducer is not None else None
    hidden, positions, span = embeds, position_ids, visual_span
    cache = DynamicCache() if use_cache else None
    cos, sin = stack.rotary(hidden, positions)
    counts: list[int] = []
    info: dict = {}
    view_attention = None
    for index, layer in enumerate(stack.layers):
        if plan_layer is not None and index == plan_layer:
            hidden, positions, span, info = _apply_in_llm(reducer, stack, hidden, positions, span, view_attention, index)
            cos, sin = stack.rotary(hidden, positions)
        if plan_layer is not None and index == plan_layer - 1:
            view_attention = (layer, hidden, cos, sin)
        hidden = layer(
            hidden,
            attention_mask=_causal_mask(stack, hidden.shape[1], hidden.dtype, hidden.device),
            position_ids=_layer_position_ids(positions),
            past_key_values=cache,
            use_cache=use_cache,
            position_embeddings=(cos, sin),
        )
        counts.append(span[1] - span[0])
    logits = stack.lm_head(stack.norm(hidden[:, -1:]))[0, -1]
    return PrefillResult(logits, cache, int(positions[..., -1].max()) + 1, counts, info)


def _apply_in_llm(reducer, stack, hidden, positions, span, view_attention, index):
    prev_layer, prev_hidden, prev_cos, prev_sin = view_attention
    start, end = span
    view = LayerView(
        hidden=hidden[0],
        visual_span=span,
        last_query_attention=last_query_attention(prev_layer, prev_hidden, prev_cos, prev_sin),
        layer=index,
        num_layers=stack.num_layers,
        all_query_attention_fn=lambda: all_query_attention(prev_layer, prev_hidden, prev_cos, prev_sin),
    )
    decision = reducer.reduce_in_llm(view)
    keep = decision.keep.to(hidden.device).long()
    if keep.numel() < 1:
        raise MethodError(f"method {reducer.name!r} dropped every visual token at layer {index}")
    if decision.hidden is not None:
        hidden = hidden.clone()
        hidden[0, start + keep] = decision.hidden.to(hidden.dtype)
    length = hidden.shape[1]
    device = hidden.device
    order = torch.cat([torch.arange(start, device=device), start + keep, torch.arange(end, length, device=device)])
    return hidden[:, order], positions[..., order], (start, start + keep.numel()), decision.info


@torch.inference_mode()
def generate(
    stack: DecoderStack,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    visual_span: tuple[int, int],
    reducer: Reducer | None,
    max_new_tokens: int,
    stop_ids: set[int],
    synchronize=lambda: None,
) -> Generation:
    """Prefill, then greedy decoding until a stop token or ``max_new_tokens``."""
    result = prefill(stack, embeds, position_ids, visual_span, reducer)
    token = int(result.logits.argmax())
    tokens = [token]
    synchronize()
    started = time.perf_counter()
    position = result.next_position
    while len(tokens) < max_new_tokens and token not in stop_ids:
        hidden = stack.embed_tokens(torch.tensor([[token]], device=embeds.device))
        pos = torch.tensor([[position]], device=embeds.device)
        cos, sin = stack.rotary(hidden, pos)
        for layer in stack.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=pos, past_key_values=result.cache, use_cache=True, position_embeddings=(cos, sin))
        token = int(stack.lm_head(stack.norm(hidden))[0, -1].argmax())
        tokens.append(token)
        position += 1
    synchronize()
    steps = len(tokens) - 1
    if tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return Generation(tokens, result, time.perf_counter() - started, steps)
