"""Build a small random-weight Qwen2.5-VL checkpoint entirely offline (for tests).

The result is a regular Hugging Face folder (config, safetensors weights, byte-level
tokenizer with Qwen2.5-VL's special tokens, the video/image processors, the chat template)
that ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and ``AutoProcessor`` load like a
hub checkpoint. The geometry keeps what matters to the adapter: temporal patch 2, a 2x2
merger, windowed attention in the vision encoder with full attention in its last block
(as in the released 3B/7B/72B, ``fullatt_block_indexes`` = [7, 15, 23, 31] of 32), and a
GQA decoder with M-RoPE (``mrope_section`` splitting the head's frequencies into time,
row and column).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedded.tiny import seeded_model

# The chat template of the released Qwen2-VL / Qwen2.5-VL Instruct checkpoints
# (chat_template.json): a video content part becomes <|vision_start|><|video_pad|><|vision_end|>.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclass(frozen=True)
class TinyQwenSpec:
    """Geometry of a small Qwen2.5-VL. Defaults: 48x48 frames -> 6x6 patches -> 3x3 merged."""

    patch_size: int = 8
    frame_size: int = 48  # the processor's min and max pixels are both frame_size**2
    vision_hidden: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    fullatt_block_indexes: tuple[int, ...] = (1,)
    window_size: int = 32  # pixels: 2x2 merged units per window at patch 8
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    tokens_per_second: int = 2
    seed: int = 0


def build_tokenizer():
    """A byte-level tokenizer without merges, with Qwen2.5-VL's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_config(spec: TinyQwenSpec, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    head_dim = spec.text_hidden // spec.text_heads
    if 2 * sum(spec.mrope_section) != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return Qwen2_5_VLConfig(
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_hidden * 2,
            "num_heads": spec.vision_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": spec.window_size,
            "fullatt_block_indexes": list(spec.fullatt_block_indexes),
            "out_hidden_size": spec.text_hidden,
            "tokens_per_second": spec.tokens_per_second,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(spec.mrope_section)},
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": ids("<|endoftext|>"),
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_processor(spec: TinyQwenSpec, tokenizer):
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    pixels = spec.frame_size * spec.frame_size
    common = {"patch_size": spec.patch_size, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": pixels, "max_pixels": pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_model(spec: TinyQwenSpec, tokenizer):
    """A randomly initialised (seeded by ``spec.seed``) small Qwen2.5-VL for ``tokenizer``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return seeded_model(Qwen2_5_VLForConditionalGeneration, build_config(spec, tokenizer), spec.seed)


def build_tiny_qwen2_5_vl(out_dir: str | Path, spec: TinyQwenSpec = TinyQwenSpec()) -> Path:
    """Write a randomly initialised (seeded) small Qwen2.5-VL checkpoint to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_model(spec, tokenizer).save_pretrained(out)
    build_processor(spec, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
