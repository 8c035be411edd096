"""Adapter for Hugging Face ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision, LLaVA-Video).

What it does, and nothing else (no method logic lives here):
  * load a checkpoint (local folder or hub id) and its processor;
  * build the prompt exactly as lmms-eval's ``llava_hf`` reference model does (``<video>\\n``
    before the task context, then the tokenizer's own chat template);
  * turn sampled frames into ``VideoTokens``: the projected features on the pooled grid, with
    the un-pooled grid, the model's pooling and the vision encoder's attention on request;
  * splice a method's ``ReducedTokens`` into the prompt embeddings with explicit position ids;
  * expose the decoder stack (embeddings, layers, rotary, norm, head) to the engine.

``LlavaVideoAdapter`` is the same model with LLaVA-Video's trained video geometry (lmms-eval
``llava_vid``: 2x2 average pooling to 13x13, a newline after every grid row, its frame sampling
and optional time instruction); ``open_llava_adapter`` picks the adapter from the checkpoint
(``harness/models/geometry.py`` says how).

The chat template is the tokenizer's text template (Qwen2's ChatML for every checkpoint here),
as lmms-eval's ``llava_hf`` applies it. A folder re-saved by transformers 5 stores the
processor's multimodal template in ``chat_template.jinja``, which the tokenizer then loads;
rendering a plain-text message with it drops the ``<video>`` and the question, so such a
template is replaced by the text template (``text_chat_template``).

The vision-encoder attention is computed from the q/k projections of the encoder layer that
produced the selected features (HoliTom's SigLIP score: mean over heads, then over queries),
so it works with any attention kernel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokbench.harness.blocks import BLOCK_ELEMENTS, received_attention
from tokbench.harness.models.geometry import GEOMETRIES, LLAVA_ONEVISION, LLAVA_VID, FramePlan, detect_geometry, llava_vid_frame_plan, time_instruction
from tokbench.harness.models.hf_adapter import HuggingFaceAdapter
from tokbench.harness.models.protocol import PreparedPrompt
from tokbench.harness.video import VideoClip, VideoError, read_clip
from tokbench.methods.seam import MethodError, ReducedTokens, VideoTokens

VIDEO_TOKEN = "<video>"

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen2's ChatML text template: the chat template of every LLaVA-OV / LLaVA-Video tokenizer."""


class LlavaOnevisionAdapter(HuggingFaceAdapter):
    """A loaded LLaVA-OneVision-family checkpoint seen through the method/model seam."""

    geometry = GEOMETRIES[LLAVA_ONEVISION]

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa"):
        from transformers import LlavaOnevisionForConditionalGeneration

        super().__init__(LlavaOnevisionForConditionalGeneration, pretrained, device, dtype, attn_implementation)
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)

    # -- frames and prompt ----------------------------------------------------------------
    @property
    def geometry_name(self) -> str:
        return self.geometry.name

    def read_video(self, path: str, max_frames_num: int) -> VideoClip:
        """Frames as lmms-eval's llava_hf samples them (uniform over the video); no timing plan."""
        return read_clip(path, max_frames_num)

    def build_prompt(self, context: str, plan: FramePlan | None = None) -> str:
        """The chat prompt lmms-eval's llava_hf builds for a video question (``plan`` is not used:
        llava_hf's prompt carries no timing)."""
        if VIDEO_TOKEN not in context:
            context = f"{VIDEO_TOKEN}\n{context}"
        messages = [{"role": "user", "content": context}]
        template = text_chat_template(self.tokenizer, self.checkpoint_dir)
        if template is None:
            raise MethodError(f"the tokenizer of {self.pretrained} has no chat template")
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)

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
            newline_layout=self.geometry.newline_layout,
        )

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """LLaVA-OV's own 2x2 bilinear pooling of an un-pooled grid [T, H0, W0, C] -> [T, H, W, C]."""
        return bilinear_pool(grid)

    def _encoder_attention(self, layer_input: torch.Tensor, pooled_grid: bool, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
        """Mean attention each patch receives in the encoder layer that produced the features."""
        tower = self.model.model.vision_tower
        layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
        index = self._selected_layer(len(layers) + 1) - 1
        block = layers[index]
        attn = block.self_attn
        x = block.layer_norm1(layer_input)
        frames, tokens, _ = x.shape
        q = attn.q_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(frames, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        received = received_attention(q, k, attn.scale, block_elements)
        side = int(math.isqrt(tokens))
        grid = received.view(frames, side, side, 1)
        if pooled_grid:
            grid = self.pool(grid)
        return grid[..., 0]

    # -- language model -------------------------------------------------------------------
    def prepare_prompt(self, prompt: str, reduced: ReducedTokens, video: VideoTokens, policy: str) -> PreparedPrompt:
        """Embed the prompt and splice the reduced visual tokens in place of ``<video>``."""
        ids, start, embeds = self.splice(prompt, reduced, self.video_token_id, VIDEO_TOKEN)
        positions = self._positions(start, reduced, video, len(ids) - start - 1, policy)
        return PreparedPrompt(
            embeds=embeds,
            position_ids=positions[None].to(self.device),
            visual_span=(start, start + reduced.count),
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
        return torch.cat([torch.arange(start), start + video.layout_offsets(sources), after + torch.arange(suffix_len)])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.geometry.describe()}


class LlavaVideoAdapter(LlavaOnevisionAdapter):
    """LLaVA-Video on the HF-format weights with the geometry it was trained and is evaluated with.

    lmms-eval ``llava_vid`` (``lmms_eval/models/simple/llava_vid.py``) loads the original
    checkpoint with ``mm_spatial_pool_mode=average``, ``mm_spatial_pool_stride=2`` and
    ``mm_newline_position=grid``: LLaVA-NeXT ``llava_arch.py`` then pools the projected 27x27
    grid with ``avg_pool2d`` to 13x13 (``get_2dPool``) and appends the newline embedding after
    every row of every frame (``add_token_per_grid``). The prompt is ``<image>\\n`` + question in
    the ``qwen_1_5`` conversation, which is Qwen2's ChatML with the default system prompt, i.e.
    the tokenizer's text template with the ``<video>`` placeholder of the HF weights; with
    ``add_time_instruction`` the question is preceded by llava_vid's time sentence. Frames are
    sampled by ``frame_plan`` (llava_vid's ``load_video``).
    """

    family = "llava_video"
    geometry = GEOMETRIES[LLAVA_VID]

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
                 add_time_instruction: bool = False, video_fps: int = 1, force_sample: bool = False):
        super().__init__(pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation)
        self.add_time_instruction = bool(add_time_instruction)
        self.video_fps = int(video_fps)
        self.force_sample = bool(force_sample)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """llava_vid's 2x2 average pooling (``avg_pool2d``, floor): [T, H0, W0, C] -> [T, H0 // 2, W0 // 2, C]."""
        x = F.avg_pool2d(grid.permute(0, 3, 1, 2), self.geometry.stride)
        return x.permute(0, 2, 3, 1).contiguous()

    def frame_plan(self, total_frames: int, avg_fps: float, max_frames_num: int) -> FramePlan:
        """The frames llava_vid decodes for a video of ``total_frames`` frames at ``avg_fps``."""
        return llava_vid_frame_plan(total_frames, avg_fps, max_frames_num, self.video_fps, self.force_sample)

    @property
    def geometry_name(self) -> str:
        return self.geometry.name

    def read_video(self, path: str, max_frames_num: int) -> VideoClip:
        """llava_vid's reader (decord, its default ``video_decode_backend``) with its frame plan."""
        from decord import VideoReader, cpu

        if Path(path).is_dir():  # a folder of frames has no fps: uniform sampling, no timing plan
            return read_clip(path, max_frames_num)
        if not Path(path).is_file():
            raise VideoError(f"video file not found: {path}")
        try:
            reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
            plan = self.frame_plan(len(reader), reader.get_avg_fps(), max_frames_num)
            frames = reader.get_batch(plan.indices).asnumpy()
            return VideoClip(frames, np.asarray(plan.indices), len(reader), plan)
        except Exception as exc:  # decord raises its own error types for corrupt containers
            raise VideoError(f"cannot decode video {path}: {exc.__class__.__name__}: {exc}") from None

    def build_prompt(self, context: str, plan: FramePlan | None = None) -> str:
        """llava_vid's prompt: the time instruction (if enabled) before the question, ``<video>`` first."""
        if self.add_time_instruction:
            if plan is None:
                raise MethodError("add_time_instruction needs the frame plan (video length and frame times)")
            context = f"{time_instruction(plan)}\n{context}"
        return super().build_prompt(context)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "add_time_instruction": self.add_time_instruction, "video_fps": self.video_fps, "force_sample": self.force_sample}


def open_llava_adapter(pretrained: str, geometry: str | None = None, **kwargs: Any) -> LlavaOnevisionAdapter:
    """The LLaVA adapter for a checkpoint: ``LlavaVideoAdapter`` for LLaVA-Video, else LLaVA-OV.

    ``geometry`` ("llava_onevision" or "llava_vid") overrides the detection from the
    checkpoint's config.json and name (``harness/models/geometry.py``). Options only llava_vid
    has (``add_time_instruction``, ``video_fps``, ``force_sample``) are refused for LLaVA-OV.
    """
    chosen = detect_geometry(_local_config(pretrained), pretrained, geometry)
    if chosen.name == LLAVA_VID:
        return LlavaVideoAdapter(pretrained, **kwargs)
    extra = sorted(set(kwargs) - {"device", "dtype", "attn_implementation"})
    if extra:
        raise ValueError(f"{', '.join(extra)}: only for the llava_vid geometry (LLaVA-Video checkpoints)")
    return LlavaOnevisionAdapter(pretrained, **kwargs)


def _local_config(pretrained: str) -> dict[str, Any]:
    """config.json of a local folder or a cached hub snapshot; {} when there is none offline."""
    path = Path(pretrained) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(pretrained, "config.json")
        except Exception:  # not a hub id
            cached = None
        if not isinstance(cached, str):
            return {}
        path = Path(cached)
    return json.loads(path.read_text())


def bilinear_pool(grid: torch.Tensor) -> torch.Tensor:
    """2x2 bilinear pooling [T, H0, W0, C] -> [T, ceil(H0/2), ceil(W0/2), C]: Hugging Face's
    ``apply_pooling`` for LLaVA-OV video, LLaVA-NeXT ``get_2dPool`` in bilinear mode (the one
    HoliTom's pooled features and encoder attention go through)."""
    _, h0, w0, _ = grid.shape
    x = F.interpolate(grid.permute(0, 3, 1, 2), size=[math.ceil(h0 / 2), math.ceil(w0 / 2)], mode="bilinear")
    return x.permute(0, 2, 3, 1).contiguous()


def is_multimodal_template(template: str) -> bool:
    """A processor template iterates typed content items (``content['type']``); a text one does not."""
    return "'type'" in template or '"type"' in template


def text_chat_template(tokenizer, checkpoint_dir: str | None) -> str | None:
    """The tokenizer's text chat template, even when a processor's multimodal one was loaded in its place.

    Order: the loaded template if it is a text one; else a text template in the folder's
    tokenizer_config.json; else, for a Qwen2 tokenizer (``<|im_start|>``), Qwen2's ChatML
    template with the default system prompt, which is the text template of every LLaVA-OV /
    LLaVA-Video tokenizer. None if the tokenizer has no template at all.
    """
    template = tokenizer.chat_template
    if not isinstance(template, str) or not is_multimodal_template(template):
        return template
    config = Path(checkpoint_dir or "") / "tokenizer_config.json"
    if checkpoint_dir and config.is_file():
        saved = json.loads(config.read_text()).get("chat_template")
        if isinstance(saved, str) and not is_multimodal_template(saved):
            return saved
    if "<|im_start|>" in tokenizer.get_vocab():
        return QWEN2_CHAT_TEMPLATE
    raise MethodError("the tokenizer's chat template is a processor's multimodal template and no text template was found")
