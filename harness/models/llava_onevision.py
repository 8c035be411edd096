"""Adapter for Hugging Face ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision, LLaVA-Video).

What it does, and nothing else (no method logic lives here):
  * load a checkpoint (local folder or hub id) and its processor;
  * build the prompt exactly as lmms-eval's ``llava_hf`` reference model does (``<video>\\n``
    before the task context, then the tokenizer's own chat template);
  * turn sampled frames into ``VideoTokens``: the projected features on the pooled grid, with
    the un-pooled grid, the model's pooling and the vision encoder's attention on request;
  * splice a method's ``ReducedTokens`` into the prompt embeddings with explicit position ids;
  * expose the decoder stack (embeddings, layers, rotary, norm, head) to the engine.

The vision-encoder attention is computed from the q/k projections of the encoder layer that
produced the selected features (HoliTom's SigLIP score: mean over heads, then over queries),
so it works with any attention kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.blocks import BLOCK_ELEMENTS, query_block
from methods.base import MethodError, ReducedTokens, VideoTokens

VIDEO_TOKEN = "<video>"


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
    position_ids: torch.Tensor  # [1, S]
    visual_span: tuple[int, int]
    prompt_tokens: int


class LlavaOnevisionAdapter:
    """A loaded LLaVA-OneVision-family checkpoint seen through the method/model seam."""

    family = "llava_onevision"

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa"):
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        self.pretrained = str(pretrained)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                self.pretrained, dtype=self.dtype, attn_implementation=attn_implementation
            ).to(self.device).eval()
            self.processor = AutoProcessor.from_pretrained(self.pretrained)
        except OSError as exc:
            raise ValueError(f"cannot load model {self.pretrained!r}: {exc}") from None
        self.tokenizer = self.processor.tokenizer
        self.config = self.model.config
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.checkpoint_dir = self.pretrained if _is_local_dir(self.pretrained) else _snapshot_dir(self.model)

    # -- prompt -------------------------------------------------------------------------
    def build_prompt(self, context: str) -> str:
        """The chat prompt lmms-eval's llava_hf builds for a video question."""
        if VIDEO_TOKEN not in context:
            context = f"{VIDEO_TOKEN}\n{context}"
        messages = [{"role": "user", "content": context}]
        if self.tokenizer.chat_template is None:
            raise MethodError(f"the tokenizer of {self.pretrained} has no chat template")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # -- vision -------------------------------------------------------------------------
    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """Frames [T, H, W, 3] uint8 -> normalised pixels [T, C, H', W'] on the model's device."""
        out = self.processor.video_processor(videos=[frames], return_tensors="pt")
        return out["pixel_values_videos"][0].to(self.device, self.dtype)

    def _selected_layer(self, num_hidden_states: int) -> int:
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise MethodError("vision-encoder attention needs a single vision_feature_layer")
        return layer if layer >= 0 else num_hidden_states + layer

    def encode_video(self, pixel_values: torch.Tensor) -> VideoTokens:
        """Run the vision tower and projector; return the video's tokens on their grids."""
        vision = self.model.model.vision_tower
        outputs = vision(pixel_values, output_hidden_states=True, return_dict=True)
        hidden_states = outputs.hidden_states
        layer = self.config.vision_feature_layer
        if isinstance(layer, int):
            selected = hidden_states[layer]
        else:
            selected = torch.cat([hidden_states[i] for i in layer], dim=-1)
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        projected = self.model.model.multi_modal_projector(selected)  # [T, N0, D]
        frames, n0, dim = projected.shape
        side = int(math.isqrt(n0))
        unpooled = projected.view(frames, side, side, dim)
        pooled = self.pool(unpooled)
        layer_input = hidden_states[self._selected_layer(len(hidden_states)) - 1] if isinstance(layer, int) else None
        return VideoTokens(
            features=pooled,
            newline=self.model.model.image_newline.to(pooled.dtype),
            unpooled_fn=lambda: unpooled,
            attention_fn=(lambda pooled_grid: self._encoder_attention(layer_input, pooled_grid)) if layer_input is not None else None,
            pool_fn=self.pool,
            checkpoint_dir=self.checkpoint_dir,
        )

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """LLaVA-OV's own 2x2 bilinear pooling of an un-pooled grid [T, H0, W0, C] -> [T, H, W, C]."""
        frames, h0, w0, channels = grid.shape
        x = grid.permute(0, 3, 1, 2)
        x = F.interpolate(x, size=[math.ceil(h0 / 2), math.ceil(w0 / 2)], mode="bilinear")
        return x.permute(0, 2, 3, 1).contiguous()

    def _encoder_attention(self, layer_input: torch.Tensor, pooled_grid: bool, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
        """Mean attention each patch receives in the encoder layer that produced the features,
        computed in blocks of queries (``harness.blocks``)."""
        tower = self.model.model.vision_tower
        layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
        index = self._selected_layer(len(layers) + 1) - 1
        block = layers[index]
        attn = block.self_attn
        x = block.layer_norm1(layer_input)
        frames, tokens, _ = x.shape
        q = attn.q_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        received = torch.zeros(frames, tokens, dtype=torch.float32, device=x.device)
        step = query_block(tokens, frames * attn.num_heads * tokens, block_elements)
        for start in range(0, tokens, step):  # blocks of queries: never the [T, heads, N0, N0] tensor
            scores = (q[:, :, start : start + step] @ k.transpose(-1, -2)).float() * attn.scale
            received += torch.softmax(scores, dim=-1).sum(dim=(1, 2))
        received /= attn.num_heads * tokens  # [T, N0]: mean over heads and queries
        side = int(math.isqrt(tokens))
        grid = received.view(frames, side, side, 1)
        if pooled_grid:
            grid = self.pool(grid)
        return grid[..., 0]

    # -- language model -------------------------------------------------------------------
    def decoder(self) -> DecoderStack:
        lm = self.model.model.language_model
        return DecoderStack(
            embed_tokens=lm.embed_tokens,
            layers=lm.layers,
            rotary=lm.rotary_emb,
            norm=lm.norm,
            lm_head=self.model.lm_head,
            attn_implementation=self.config.text_config._attn_implementation,
        )

    @property
    def num_layers(self) -> int:
        return int(self.config.text_config.num_hidden_layers)

    def text_dims(self) -> dict[str, int]:
        text = self.config.text_config
        return {"layers": text.num_hidden_layers, "hidden": text.hidden_size, "ffn": text.intermediate_size}

    def prepare_prompt(self, prompt: str, reduced: ReducedTokens, video: VideoTokens, policy: str) -> PreparedPrompt:
        """Embed the prompt and splice the reduced visual tokens in place of ``<video>``."""
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        where = (ids == self.video_token_id).nonzero().flatten()
        if len(where) != 1:
            raise MethodError(f"the prompt must hold exactly one {VIDEO_TOKEN} token, found {len(where)}")
        start = int(where[0])
        embed = self.model.get_input_embeddings()
        prefix = embed(ids[:start].to(self.device))
        suffix = embed(ids[start + 1 :].to(self.device))
        visual = reduced.embeddings.to(self.device, prefix.dtype)
        embeds = torch.cat([prefix, visual, suffix], dim=0)[None]
        positions = self._positions(start, reduced, video, len(suffix), policy)
        return PreparedPrompt(
            embeds=embeds,
            position_ids=positions[None].to(self.device),
            visual_span=(start, start + int(visual.shape[0])),
            prompt_tokens=int(embeds.shape[1]),
        )

    @staticmethod
    def _positions(start: int, reduced: ReducedTokens, video: VideoTokens, suffix_len: int, policy: str) -> torch.Tensor:
        count = reduced.count
        if policy == "compact":
            return torch.arange(start + count + suffix_len)
        sources = reduced.source_positions.cpu()
        if bool((sources < 0).any()):
            raise MethodError("position policy 'original' needs a grid position for every token; this method's tokens have none")
        after = start + video.default_token_count
        return torch.cat([torch.arange(start), start + sources, after + torch.arange(suffix_len)])

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.pretrained,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def _is_local_dir(path: str) -> bool:
    return Path(path).is_dir()


def _snapshot_dir(model: torch.nn.Module) -> str | None:
    return getattr(model.config, "_name_or_path", None)
