"""Build a small LLaVA-OneVision checkpoint from scratch, entirely offline.

The result is a regular Hugging Face folder (config, safetensors weights, tokenizer,
processor, chat template) that ``LlavaOnevisionForConditionalGeneration.from_pretrained``
and ``AutoProcessor.from_pretrained`` load like a hub checkpoint. Tests use it with random
weights; the embedded default trains one (``embedded/train_tiny.py``).

The tokenizer is byte-level BPE with the special tokens of LLaVA-OV's Qwen2 tokenizer. Without a
corpus it has no merges (every byte is a token), so any prompt can be encoded without a trained
vocabulary; given a corpus (the trainer passes SynthVQA prompts) it learns merges so that the
task's words are single tokens. Either way every byte stays encodable. The chat template is
Qwen2's, as the real checkpoints' tokenizer uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tokbench.harness.models.llava_onevision import QWEN2_CHAT_TEMPLATE, VIDEO_TOKEN

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", VIDEO_TOKEN)


@dataclass(frozen=True)
class TinySpec:
    """Geometry of a small LLaVA-OneVision. Defaults give a 14x14 un-pooled, 7x7 pooled grid."""

    image_size: int = 112
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    max_position: int = 4096
    seed: int = 0


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, first_special_id: int | None = None):
    """A byte-level BPE tokenizer with Qwen2's special tokens and chat template.

    With no ``corpus`` it has no merges; with one, merges are learned from it (up to
    ``vocab_size`` entries, the 256 byte symbols included). ``first_special_id`` (no corpus
    only) pads the vocabulary with unreachable filler entries so that the special tokens get the
    real checkpoints' ids (151643 for Qwen2: ``<|endoftext|>`` .. ``<video>`` = 151647).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if corpus is None:
        vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
        for index in range(len(vocab), first_special_id or 0):
            vocab[f"<|filler_{index}|>"] = index
        core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        if first_special_id is not None:  # the real order: <|endoftext|>, <|im_start|>, <|im_end|>, <image>, <video>
            core.add_special_tokens(list(SPECIAL_TOKENS))
    else:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
        core.train_from_iterator(corpus, trainer)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    if first_special_id is not None and tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[0]) != first_special_id:
        raise ValueError(f"special tokens did not land at id {first_special_id}")
    return tokenizer


def build_config(spec: TinySpec, tokenizer):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[spec.image_size, spec.image_size]],
    )


def build_processor(spec: TinySpec, tokenizer):
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    size = {"height": spec.image_size, "width": spec.image_size}
    grid = spec.image_size // spec.patch_size
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[spec.image_size, spec.image_size]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        chat_template=QWEN2_CHAT_TEMPLATE,
    )


def seeded_model(model_class: type, config, seed: int):
    """``model_class(config)`` initialised by transformers after ``torch.manual_seed(seed)``, in eval
    mode, generating until the text config's end-of-sequence token."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model


def build_model(spec: TinySpec, tokenizer):
    """A randomly initialised (seeded by ``spec.seed``) small LLaVA-OneVision for ``tokenizer``."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return seeded_model(LlavaOnevisionForConditionalGeneration, build_config(spec, tokenizer), spec.seed)


def save_checkpoint(out_dir: str | Path, spec: TinySpec, model, tokenizer) -> Path:
    """Write model, processor and tokenizer to ``out_dir`` as a Hugging Face folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(spec, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llava_onevision(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a randomly initialised (seeded) small LLaVA-OneVision checkpoint to ``out_dir``."""
    tokenizer = build_tokenizer()
    return save_checkpoint(out_dir, spec, build_model(spec, tokenizer), tokenizer)
