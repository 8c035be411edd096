"""Engine correctness on a tiny random LLaVA-OneVision: equality with HF, in-LLM plans, counts."""

from __future__ import annotations

import torch

from tokbench.harness import engine
from tokbench.methods.base import InLLMDecision, Reducer, keep_all


class KeepAllAt(Reducer):
    """An in-LLM plan at layer K that keeps every visual token."""

    name = "keep_all_at"
    takes_budget = False

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer

    def in_llm_layer(self, num_layers):
        return self.layer

    def reduce_in_llm(self, view):
        return InLLMDecision(keep=torch.arange(view.visual_count))


class KeepFirst(KeepAllAt):
    def __init__(self, layer: int, count: int):
        super().__init__(layer)
        self.count = count

    def reduce_in_llm(self, view):
        return InLLMDecision(keep=torch.arange(self.count))


def _prepared(adapter, frames, question="What is shown?"):
    prompt = adapter.build_prompt(question)
    video = adapter.encode_video(adapter.pixel_values(frames))
    return prompt, adapter.prepare_prompt(prompt, keep_all(video), video, "compact")


def test_full_matches_hf_generate(tiny_adapter, frames):
    prompt, prepared = _prepared(tiny_adapter, frames)
    ours = engine.generate(tiny_adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, None, 8, set())
    inputs = tiny_adapter.processor(videos=[frames], text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = tiny_adapter.model(**inputs).logits[0, -1]
        reference = tiny_adapter.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert prepared.embeds.shape[1] == inputs["input_ids"].shape[1]
    assert torch.allclose(ours.prefill.logits, logits, atol=1e-4)
    assert ours.token_ids == reference[0, inputs["input_ids"].shape[1] :].tolist()


def test_in_llm_plan_keeping_everything_equals_full(tiny_adapter, frames):
    _, prepared = _prepared(tiny_adapter, frames)
    stack = tiny_adapter.decoder()
    full = engine.prefill(stack, prepared.embeds, prepared.position_ids, prepared.visual_span)
    planned = engine.prefill(stack, prepared.embeds, prepared.position_ids, prepared.visual_span, KeepAllAt(2))
    assert torch.allclose(full.logits, planned.logits, atol=1e-5)


def test_layer_counts_follow_the_plan(tiny_adapter, frames):
    _, prepared = _prepared(tiny_adapter, frames)
    visual = prepared.visual_span[1] - prepared.visual_span[0]
    result = engine.prefill(tiny_adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, KeepFirst(3, 5))
    assert result.layer_visual_counts == [visual, visual, visual, 5]
    # kept tokens keep their original positions: the next position is the unpruned length
    assert result.next_position == prepared.embeds.shape[1]


def test_last_query_attention_matches_eager_weights(tiny_adapter, frames):
    """Our q/k attention (rotary, GQA) equals the eager kernel's probabilities of the last query."""
    _, prepared = _prepared(tiny_adapter, frames)
    stack = tiny_adapter.decoder()
    hidden = prepared.embeds
    cos, sin = stack.rotary(hidden, prepared.position_ids)
    ours = engine.last_query_attention(stack.layers[0], hidden, cos, sin)
    all_queries = engine.all_query_attention(stack.layers[0], hidden, cos, sin)
    attn = stack.layers[0].self_attn
    x = stack.layers[0].input_layernorm(hidden)
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, eager_attention_forward

    shape = (1, -1, attn.head_dim)
    q = attn.q_proj(x).view(*shape[:2], attn.config.num_attention_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(*shape[:2], attn.config.num_key_value_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(*shape[:2], attn.config.num_key_value_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    length = hidden.shape[1]
    mask = torch.full((length, length), torch.finfo(q.dtype).min).triu(1)[None, None]
    _, weights = eager_attention_forward(attn, q, k, v, mask, scaling=attn.scaling)
    assert attn.config.num_attention_heads != attn.config.num_key_value_heads  # GQA is exercised
    assert torch.allclose(ours, weights[0, :, -1], atol=1e-5)
    assert torch.allclose(all_queries, weights[0].mean(dim=1), atol=1e-5)


def test_eager_and_sdpa_give_the_same_prefill(tiny_checkpoint, frames):
    from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter

    results = []
    for implementation in ("eager", "sdpa"):
        adapter = LlavaOnevisionAdapter(tiny_checkpoint, device="cpu", attn_implementation=implementation)
        _, prepared = _prepared(adapter, frames)
        results.append(engine.prefill(adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, KeepFirst(2, 4)).logits)
    assert torch.allclose(results[0], results[1], atol=1e-4)
