"""Adapter for Hugging Face ``Qwen2_5_VLForConditionalGeneration`` (Qwen2.5-VL 3B / 7B / 72B).

What it does, and nothing else (no method logic lives here):
  * load a checkpoint and its processor;
  * build the prompt as lmms-eval's own ``qwen2_5_vl`` model does (``lmms_eval/models/simple/
    qwen2_5_vl.py``: a system message "You are a helpful assistant.", then one user message
    holding the video part and the task context, through the checkpoint's chat template);
  * frames -> pixels through the processor's own video path (``min_pixels``/``max_pixels``
    resizing to multiples of patch x merge, frames padded to a multiple of the temporal patch
    size 2), called as lmms-eval calls it (no fps metadata: ``second_per_grid_ts`` is the
    processor's default);
  * pixels -> ``VideoTokens``: the merger's output on the merged grid [T', H', W', D]
    (T' = frames / 2, H' = H / 28 at patch 14), with on request the pre-merge patch grid
    [T', 2H', 2W', D] (each patch through the merger as a uniform 2x2 unit: the merger has no
    per-patch path) and the vision encoder's attention;
  * splice a method's ``ReducedTokens`` into the prompt with M-RoPE position ids [3, 1, S]
    computed by the model's own ``get_rope_index`` (see ``mrope_positions``);
  * expose the decoder stack (embeddings, layers, multimodal rotary, norm, head).

Vision-encoder attention: Qwen2.5-VL's encoder attends within windows (``window_size``
pixels) in most blocks and over the whole frame pair only in ``fullatt_block_indexes``
([7, 15, 23, 31] of 32 in the released models). The score is taken from the last
full-attention block (block 31, the block whose output the merger reads, in every released
checkpoint): mean attention each patch receives, over heads then queries of its frame pair,
computed from that block's q/k (2-D rotary applied) so it works with any attention kernel.
On the merged grid it is the mean over each 2x2 merge unit.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import torch

from tokbench.harness.blocks import received_attention
from tokbench.harness.models.hf_adapter import HuggingFaceAdapter
from tokbench.harness.models.protocol import PreparedPrompt
from tokbench.harness.video import VideoClip, read_clip
from tokbench.methods.seam import MethodError, ReducedTokens, VideoTokens

SYSTEM_PROMPT = "You are a helpful assistant."  # lmms-eval qwen2_5_vl's default system_prompt
VIDEO_TYPE = 2  # mm_token_type_ids value of video tokens


class Qwen2_5_VLAdapter(HuggingFaceAdapter):
    """A loaded Qwen2.5-VL checkpoint seen through the method/model seam."""

    geometry_name = "qwen2_5_vl"  # 2x2 merger over frame pairs, no newline token

    def __init__(self, pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        super().__init__(Qwen2_5_VLForConditionalGeneration, pretrained, device, dtype, attn_implementation)
        self.video_token_id = int(self.config.video_token_id)
        self.merge = int(self.config.vision_config.spatial_merge_size)
        self.second_per_grid_t = 1.0  # replaced by the processor's value for each video

    # -- prompt -------------------------------------------------------------------------
    def read_video(self, path: str, max_frames_num: int) -> VideoClip:
        """``max_frames_num`` frames sampled uniformly over the video (no timing plan)."""
        return read_clip(path, max_frames_num)

    def build_prompt(self, context: str, plan: None = None) -> str:
        """The chat prompt lmms-eval's qwen2_5_vl builds for one video and a question."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "video", "video": "video"}, {"type": "text", "text": context.replace("<image>", "")}]},
        ]
        if self.processor.chat_template is None:
            raise MethodError(f"the processor of {self.pretrained} has no chat template")
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- vision -------------------------------------------------------------------------
    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """Frames [T, H, W, 3] uint8 -> patches [T', H', W', merge^2, C*2*p*p] on the model's device.

        The processor's flat patch order (frame pair, merged row, merged column, 2x2 unit) kept,
        with the grid in the shape so that the tensor alone describes the video.
        """
        out = self.processor(text=[self.processor.video_token], videos=[frames], return_tensors="pt")
        t, h, w = (int(v) for v in out["video_grid_thw"][0])
        self.second_per_grid_t = float(out["second_per_grid_ts"][0])
        m = self.merge
        pixels = out["pixel_values_videos"].view(t, h // m, w // m, m * m, -1)
        return pixels.to(self.device, self.dtype)

    def _last_full_block(self) -> int:
        visual = self.model.model.visual
        full = [i for i in visual.fullatt_block_indexes if i < len(visual.blocks)]
        if not full:
            raise MethodError("this Qwen2.5-VL vision encoder has no full-attention block to score patches with")
        return max(full)

    def encode_video(self, pixels: torch.Tensor) -> VideoTokens:
        """Vision encoder and merger; the merged grid, with the pre-merge grid and attention on request."""
        visual = self.model.model.visual
        t, hm, wm, units, width = pixels.shape
        grid_thw = torch.tensor([[t, hm * self.merge, wm * self.merge]], device=pixels.device)
        captured: dict[str, Any] = {}
        block = visual.blocks[self._last_full_block()]
        handle = block.register_forward_pre_hook(
            lambda _module, args, kwargs: captured.update(hidden=args[0], kwargs=kwargs), with_kwargs=True
        )
        try:
            out = visual(pixels.reshape(-1, width).type(visual.dtype), grid_thw=grid_thw)
        finally:
            handle.remove()
        merged = out.pooler_output.view(t, hm, wm, -1)
        restore = torch.argsort(self._window_index(grid_thw))
        pre_merge = out.last_hidden_state.view(-1, units, out.last_hidden_state.shape[-1])[restore]  # merge units in grid order
        return VideoTokens(
            features=merged,
            newline=None,
            unpooled_fn=lambda: self._per_patch(pre_merge, t, hm, wm),
            attention_fn=lambda pooled: self._encoder_attention(block, captured, restore, (t, hm, wm), pooled),
            checkpoint_dir=self.checkpoint_dir,
        )

    def _window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The encoder's window permutation of merge units (the function its forward uses)."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        index, _ = get_vision_window_index(grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        return index.to(grid_thw.device)

    def _per_patch(self, pre_merge: torch.Tensor, t: int, hm: int, wm: int) -> torch.Tensor:
        """Each pre-merge patch through the merger as a uniform 2x2 unit: [T', 2H', 2W', D]."""
        m = self.merge
        patches = pre_merge.reshape(-1, pre_merge.shape[-1])  # (t, h', w', mh, mw) order
        projected = self.model.model.visual.merger(patches.repeat_interleave(m * m, dim=0))
        grid = projected.view(t, hm, wm, m, m, -1).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(t, hm * m, wm * m, -1)

    def _encoder_attention(self, block, captured: dict, restore: torch.Tensor, shape, pooled_grid: bool) -> torch.Tensor:
        """Mean attention each patch receives in the last full-attention block, per frame pair."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            apply_rotary_pos_emb_vision,
        )

        t, hm, wm = shape
        m = self.merge
        attn = block.attn
        x = block.norm1(captured["hidden"])
        tokens = x.shape[0]
        q, k, _ = attn.qkv(x).reshape(tokens, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = captured["kwargs"]["position_embeddings"]
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        bounds = captured["kwargs"]["cu_seqlens"].tolist()
        received = []
        for start, end in pairwise(bounds):  # each frame pair attends within itself
            qs, ks = q[start:end].transpose(0, 1).float(), k[start:end].transpose(0, 1).float()
            received.append(received_attention(qs[None], ks[None], attn.scaling)[0])  # heads, then queries, in blocks
        scores = torch.cat(received).view(-1, m * m)[restore]  # merge units in grid order
        if pooled_grid:
            return scores.mean(dim=-1).view(t, hm, wm)
        return scores.view(t, hm, wm, m, m).permute(0, 1, 3, 2, 4).reshape(t, hm * m, wm * m)

    # -- language model -------------------------------------------------------------------
    def prepare_prompt(self, prompt: str, reduced: ReducedTokens, video: VideoTokens, policy: str) -> PreparedPrompt:
        """Embed the prompt and splice the reduced visual tokens in place of ``<|video_pad|>``."""
        ids, start, embeds = self.splice(prompt, reduced, self.video_token_id, "<|video_pad|>")
        positions = self.mrope_positions(ids, start, reduced, video, policy)
        return PreparedPrompt(
            embeds=embeds,
            position_ids=positions.to(self.device),
            visual_span=(start, start + reduced.count),
            prompt_tokens=int(embeds.shape[1]),
        )

    def rope_index(self, ids: torch.Tensor, start: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """The model's own 3-D positions [3, S'] for ``ids`` with its one video placeholder
        expanded to a ``grid`` = (T', H', W') merged video (``get_rope_index``)."""
        count = grid[0] * grid[1] * grid[2]
        full = torch.cat([ids[:start], ids.new_full((count,), self.video_token_id), ids[start + 1 :]])
        types = torch.zeros_like(full, dtype=torch.int)
        types[start : start + count] = VIDEO_TYPE
        grid_thw = torch.tensor([[grid[0], grid[1] * self.merge, grid[2] * self.merge]])
        positions, _ = self.model.model.get_rope_index(
            full[None], types[None], video_grid_thw=grid_thw, second_per_grid_ts=torch.tensor([self.second_per_grid_t])
        )
        return positions[:, 0]

    def mrope_positions(self, ids: torch.Tensor, start: int, reduced: ReducedTokens, video: VideoTokens, policy: str) -> torch.Tensor:
        """M-RoPE position ids [3, 1, S] of the spliced prompt.

        ``original``: every kept token keeps the 3-D position the model gives its grid cell in
        the full video, and the text after the video keeps its full-video positions (the
        model's rope delta). ``compact``: the kept cells' time, row and column indices are each
        renumbered densely (rank among the kept values), and the positions are the model's own
        for a video of that compacted grid; with every cell kept this equals ``original``.
        Tokens without a grid cell (codebook entries, source -1) are numbered like text
        (``compact`` only).
        """
        grid = (video.num_frames, *video.grid)
        sources = reduced.source_positions.cpu().long()
        suffix_len = len(ids) - start - 1
        if policy == "original":
            if bool((sources < 0).any()):
                raise MethodError("position policy 'original' needs a grid position for every token; this method's tokens have none")
            full = self.rope_index(ids, start, grid)
            count = video.grid_token_count
            out = torch.cat([full[:, :start], full[:, start + sources], full[:, start + count :]], dim=1)
        elif bool((sources < 0).any()):
            out = torch.arange(start + reduced.count + suffix_len).expand(3, -1)
        else:
            cells = torch.stack(torch.unravel_index(sources, grid))  # [3, M]: t, h, w
            ranks, sizes = [], []
            for axis in cells:
                values, inverse = torch.unique(axis, return_inverse=True)
                ranks.append(inverse)
                sizes.append(len(values))
            compacted = self.rope_index(ids, start, tuple(sizes))
            flat = (ranks[0] * sizes[1] + ranks[1]) * sizes[2] + ranks[2]
            count = sizes[0] * sizes[1] * sizes[2]
            out = torch.cat([compacted[:, :start], compacted[:, start + flat], compacted[:, start + count :]], dim=1)
        return out[:, None]
