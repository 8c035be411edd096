"""The real configurations of LLaVA-OneVision-0.5B / -7B and LLaVA-Video-7B, as random-weight checkpoints.

``build_reference_checkpoint(name, out_dir)`` writes a Hugging Face folder (config, safetensors
weights, processor, tokenizer, chat templates) that loads like the hub checkpoint, with every
configuration value of the real one except the depth (``vision_layers`` / ``text_layers``,
default 2 / 2) and, only when asked (``vocab_size=``), the number of embedding rows. Tests and
``scripts/gpu_check.sh`` use them to check geometry, token counts and engine equality at the
real widths without downloading weights.

Sources of the values:
  * vision tower, projector, processor: transformers' conversion script that produced the
    llava-hf checkpoints (``src/transformers/models/llava_onevision/
    convert_llava_onevision_weights_to_hf.py``: SigLIP-so400m 384/14, hidden 1152, FFN 4304,
    16 heads, 26 layers with the last one dropped, no head; ``num_image_tokens=729``,
    ``vision_feature_select_strategy="full"``; image/video processors of
    google/siglip-so400m-patch14-384: 384x384 bicubic, mean = std = 0.5), and the llava-hf
    generation_config.json (bos 151643, eos 151645).
  * language model: the script's text model (Qwen/Qwen2-0.5B-Instruct for 0.5B,
    Qwen/Qwen2-7B-Instruct for 7B) with ``<image>`` (151646) and ``<video>`` (151647) added
    and the embeddings resized to a multiple of 64: 151936 + 2 -> 152000 rows (0.5B),
    152064 + 2 -> 152128 (7B). Qwen2-0.5B: hidden 896, FFN 4864, 24 layers, 14 heads, 2 KV
    heads, tied embeddings; Qwen2-7B: hidden 3584, FFN 18944, 28 layers, 28 heads, 4 KV heads,
    untied; both rope_theta 1e6, RMSNorm eps 1e-6, 32768 positions, SiLU.
  * LLaVA-Video-7B-Qwen2 (llava-hf/LLaVA-Video-7B-Qwen2-hf): the same architecture as
    LLaVA-OV-7B (Qwen2-7B + the same SigLIP tower, ``LlavaOnevisionForConditionalGeneration``);
    its config.json was not readable through this project's search tools, so its values are
    those of OV-7B. The folder additionally carries LLaVA-NeXT's ``mm_newline_position: "grid"``
    and ``mm_spatial_pool_mode: "average"`` (what lmms-eval's ``llava_vid`` sets), which
    ``harness/models/geometry.py`` reads to choose the llava_vid geometry.

What differs from the real checkpoints, exactly:
  * depth: ``vision_layers`` of 26 SigLIP layers and ``text_layers`` of 24 / 28 Qwen2 layers;
  * weights: random (seeded), so answers are meaningless; stored in ``dtype``;
  * tokenizer: ``embedded/tiny.py``'s byte-level BPE without merges (any text encodes, but
    ids of ordinary text differ from Qwen2's); its special tokens and their ids (151643-151647)
    and its chat template (Qwen2's ChatML) are the real ones, and the processor carries the
    llava-hf multimodal chat template (written here, equivalent in output);
  * ``vocab_size=`` (optional) cuts the embedding rows, e.g. to keep a 7B-width test small
    (152128 x 3584 is 545M parameters per matrix); the special tokens then get the ids
    ``vocab_size - 5`` .. ``vocab_size - 1`` and config ids follow them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokbench.harness.models.geometry import LLAVA_ONEVISION, LLAVA_VID
from embedded.tiny import SPECIAL_TOKENS, build_tokenizer

SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}

QWEN2_COMMON = {"hidden_act": "silu", "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "use_sliding_window": False}

QWEN2_0_5B = {**QWEN2_COMMON, "vocab_size": 152000, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}

QWEN2_7B = {**QWEN2_COMMON, "vocab_size": 152128, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}

FIRST_SPECIAL_ID = 151643
"""``<|endoftext|>``; then ``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ``<image>`` 151646, ``<video>`` 151647."""

PIXEL_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

PROCESSOR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The llava-hf processors' multimodal template, in our own words: per message the role header,
``<image>\\n`` per image item, ``<video>\\n`` per video item, then the text items (no system
prompt). A re-saved folder hands it to the tokenizer (see ``text_chat_template``)."""


@dataclass(frozen=True)
class ReferenceModel:
    """A real checkpoint's configuration: hub id, language model, video geometry."""

    name: str
    hub_id: str
    text: dict[str, Any]
    geometry: str
    vision: dict[str, Any] = field(default_factory=lambda: dict(SIGLIP_SO400M))


REFERENCE_MODELS = {
    "llava-ov-0.5b": ReferenceModel("llava-ov-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", QWEN2_0_5B, LLAVA_ONEVISION),
    "llava-ov-7b": ReferenceModel("llava-ov-7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf", QWEN2_7B, LLAVA_ONEVISION),
    "llava-video-7b": ReferenceModel("llava-video-7b", "llava-hf/LLaVA-Video-7B-Qwen2-hf", QWEN2_7B, LLAVA_VID),
}


def reference_config(name: str, vision_layers: int = 2, text_layers: int = 2, vocab_size: int | None = None):
    """The ``LlavaOnevisionConfig`` of ``name`` with the depth (and optionally the vocabulary) cut."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    ref = REFERENCE_MODELS[name]
    vocab = vocab_size or ref.text["vocab_size"]
    first_special = _first_special_id(vocab_size)
    text = Qwen2Config(**{**ref.text, "vocab_size": vocab, "num_hidden_layers": text_layers},
                       bos_token_id=first_special, eos_token_id=first_special + 2, pad_token_id=first_special)
    vision = SiglipVisionConfig(**{**ref.vision, "num_hidden_layers": vision_layers})
    extra = {"mm_newline_position": "grid", "mm_spatial_pool_mode": "average"} if ref.geometry == LLAVA_VID else {}
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=first_special + 3,
        video_token_index=first_special + 4,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=ref.text["tie_word_embeddings"],
        **extra,
    )


def _first_special_id(vocab_size: int | None) -> int:
    return FIRST_SPECIAL_ID if vocab_size is None else vocab_size - len(SPECIAL_TOKENS)


def reference_processor(tokenizer):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**PIXEL_NORM),
        video_processor=LlavaOnevisionVideoProcessor(**PIXEL_NORM),
        tokenizer=tokenizer,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        chat_template=PROCESSOR_CHAT_TEMPLATE,
    )


def build_reference_checkpoint(
    name: str,
    out_dir: str | Path,
    vision_layers: int = 2,
    text_layers: int = 2,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Write a random-weight checkpoint of ``name`` (see ``REFERENCE_MODELS``) to ``out_dir``.

    Weights are stored in ``dtype`` (bf16 by default, as the hub checkpoints; loading in fp32
    upcasts them). The folder is laid out like the llava-hf hub folders: the tokenizer's text
    template in tokenizer_config.json, the processor's multimodal template in chat_template.json.
    """
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}: one of {', '.join(REFERENCE_MODELS)}")
    config = reference_config(name, vision_layers, text_layers, vocab_size)
    tokenizer = build_tokenizer(first_special_id=_first_special_id(vocab_size))
    model = random_model(config, dtype, seed)
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    reference_processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _hub_layout_templates(out, tokenizer.chat_template)
    return out


def random_model(config, dtype: torch.dtype, seed: int):
    """``LlavaOnevisionForConditionalGeneration(config)`` with seeded N(0, 0.02) weights, norms at 1.

    transformers' own initialisation takes ~20 s for the 152k-row embedding on two CPU cores;
    this fills the same shapes directly (norm weights 1, biases 0, everything else N(0, 0.02)).
    """
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = LlavaOnevisionForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.fill_(1.0 if param_name.endswith("weight") else 0.0)
            elif param_name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.tie_weights()
    return model


def _hub_layout_templates(out: Path, text_template: str) -> None:
    """Put the templates where the llava-hf hub folders have them (transformers 4.45 layout)."""
    (out / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = out / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    data["chat_template"] = text_template
    tokenizer_config.write_text(json.dumps(data, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": PROCESSOR_CHAT_TEMPLATE}, indent=2))


def resave(src: str | Path, out_dir: str | Path) -> Path:
    """Load a checkpoint folder with transformers and save it again (the transformers-5 layout)."""
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    out = Path(out_dir)
    LlavaOnevisionForConditionalGeneration.from_pretrained(src).save_pretrained(out)
    AutoProcessor.from_pretrained(src).save_pretrained(out)
    return out
