"""What the runner and the engine need from a model family: the adapter protocol and its types.

A model family is one adapter file in ``harness/models/`` implementing ``ModelAdapter``; the
engine and the runner only use what is declared here. The flow for one sample:

    frames [T, H, W, 3] uint8 --pixel_values--> pixels (a tensor, traceable by fvcore)
    pixels --encode_video--> VideoTokens (methods/seam.py) --a method--> ReducedTokens
    build_prompt(context) + ReducedTokens --prepare_prompt--> PreparedPrompt
    PreparedPrompt + decoder() --engine.prefill / engine.generate--> token ids --decode--> text

Position ids are the model's own scheme: ``[1, S]`` for a 1-D rotary (LLaVA-OneVision's
Qwen2), ``[3, 1, S]`` for a multimodal rotary (Qwen2.5-VL's M-RoPE: time, row, column).
``DecoderStack.rotary(hidden, position_ids)`` accepts the adapter's shape and returns the
per-token (cos, sin) every decoder layer applies; decoding continues one position past the
largest prefill position in every axis (what Hugging Face's ``rope_deltas`` encodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from tokbench.harness.video import VideoClip
from tokbench.methods.seam import ReducedTokens, VideoTokens


@dataclass
class DecoderStack:
    """The pieces of the language model the engine runs layer by layer."""

    embed_tokens: torch.nn.Module
    layers: torch.nn.ModuleList
    rotary: torch.nn.Module
    norm: torch.nn.Module
    lm_head: torch.nn.Module
    attn_implementation: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass
class PreparedPrompt:
    """Prompt embeddings with the video spliced in, ready for prefill (batch of one)."""

    embeds: torch.Tensor  # [1, S, D]
    position_ids: torch.Tensor  # [1, S], or [3, 1, S] for a multimodal rotary
    visual_span: tuple[int, int]
    prompt_tokens: int


class ModelAdapter(Protocol):
    """A loaded checkpoint of one model family, seen through the method/model seam."""

    pretrained: str
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module
    tokenizer: Any
    checkpoint_dir: str | None

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa") -> None: ...

    geometry_name: str
    """The video geometry the adapter feeds (recorded in each row), e.g. ``llava_vid``."""

    def read_video(self, path: str, max_frames_num: int) -> VideoClip:
        """The frames the family's lmms-eval reference model samples (``VideoClip.frames``, uint8
        [T, H, W, 3]), with the timing plan its prompt may need (``VideoClip.plan``, else None)."""

    def build_prompt(self, context: str, plan: Any = None) -> str:
        """The chat prompt the family's lmms-eval reference model builds, with one video slot."""

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """Sampled frames [T, H, W, 3] uint8 -> the vision tower's input, on the model's device."""

    def encode_video(self, pixels: torch.Tensor) -> VideoTokens:
        """Vision tower (and projector / merger): the video's tokens on their grid."""

    def prepare_prompt(self, prompt: str, reduced: ReducedTokens, video: VideoTokens, policy: str) -> PreparedPrompt:
        """Embed the prompt, splice the reduced tokens into the video slot, assign position ids."""

    def decoder(self) -> DecoderStack: ...

    def stop_token_ids(self) -> set[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def describe(self) -> dict[str, Any]:
        """What the row and ``tokbench ask`` report of the loaded model: model, device, dtype, geometry."""

    def text_dims(self) -> dict[str, int]:
        """LLM depth and widths for the paper FLOPs: ``layers``, ``hidden``, ``ffn``."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {dtype!r}") from None
