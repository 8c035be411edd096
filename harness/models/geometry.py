"""Video geometry of the LLaVA families: pooling, newline layout, prompt timing, frame sampling.

One place for the facts that decide how many tokens a video becomes and how they are laid out.
Both ``harness/models/llava_onevision.py`` (the adapters) and ``harness/flops.py`` (the paper
formula's tokens per frame) read them from here.

* ``llava_onevision`` — what Hugging Face's ``LlavaOnevisionForConditionalGeneration`` does for
  video and lmms-eval's ``llava_hf`` evaluates: the 27x27 SigLIP grid (384 / 14) is pooled 2x2
  **bilinearly** to ceil(27 / 2) = 14x14 = 196 tokens per frame, and one newline token follows
  the whole video (``modeling_llava_onevision.py`` ``apply_pooling`` and the video branch of
  ``get_video_features``).
* ``llava_vid`` — what LLaVA-Video was trained with and lmms-eval's ``llava_vid`` model
  (``lmms_eval/models/simple/llava_vid.py``, defaults ``mm_spatial_pool_mode="average"``,
  ``mm_spatial_pool_stride=2``, ``mm_newline_position="grid"``) evaluates: the grid is pooled
  2x2 by **average** pooling (``avg_pool2d``, floor) to 13x13 = 169 tokens per frame and a
  newline follows every row of every frame, 13 per frame (LLaVA-NeXT
  ``llava/model/llava_arch.py``: ``get_2dPool`` and ``add_token_per_grid``). 32 frames:
  5,408 grid tokens + 416 newlines = 5,824 tokens fed.

How a checkpoint's geometry is chosen (``detect_geometry``), first match wins:
  1. an explicit ``geometry=`` given by the user;
  2. the checkpoint's config.json carrying LLaVA-NeXT's own keys ``mm_newline_position: "grid"``
     (the reference builder writes them for LLaVA-Video);
  3. the checkpoint's name (hub id, folder name or config ``_name_or_path``) containing
     ``llava-video`` / ``llava_video`` (case-insensitive), e.g. ``llava-hf/LLaVA-Video-7B-Qwen2-hf``;
  4. otherwise ``llava_onevision``.

``llava_vid`` also samples frames its own way (``llava_vid_frame_plan``, from ``load_video``) and
can prepend a time instruction to the question (``time_instruction``, from ``generate_until``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

NEWLINE_ONE_TOKEN = "one_token"
NEWLINE_GRID = "grid"

LLAVA_ONEVISION = "llava_onevision"
LLAVA_VID = "llava_vid"

_VIDEO_NAME = re.compile(r"llava[-_]?video", re.IGNORECASE)


@dataclass(frozen=True)
class VideoGeometry:
    """How a frame's un-pooled ``side`` x ``side`` grid becomes tokens fed to the LLM."""

    name: str
    pool_mode: str  # "bilinear" (ceil) or "average" (floor)
    stride: int
    newline_layout: str  # NEWLINE_ONE_TOKEN: one after the video; NEWLINE_GRID: one after every row

    def pooled_side(self, side: int) -> int:
        return math.ceil(side / self.stride) if self.pool_mode == "bilinear" else side // self.stride

    def tokens_per_frame(self, side: int) -> int:
        """Grid tokens per frame (newlines excluded)."""
        return self.pooled_side(side) ** 2

    def newlines(self, side: int, frames: int) -> int:
        """Newline tokens a video of ``frames`` frames carries."""
        return frames * self.pooled_side(side) if self.newline_layout == NEWLINE_GRID else 1

    def describe(self) -> dict[str, Any]:
        return {"geometry": self.name, "pool_mode": self.pool_mode, "pool_stride": self.stride, "newline_layout": self.newline_layout}


GEOMETRIES = {
    LLAVA_ONEVISION: VideoGeometry(LLAVA_ONEVISION, "bilinear", 2, NEWLINE_ONE_TOKEN),
    LLAVA_VID: VideoGeometry(LLAVA_VID, "average", 2, NEWLINE_GRID),
}


def get_geometry(name: str) -> VideoGeometry:
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r}: one of {', '.join(GEOMETRIES)}")
    return GEOMETRIES[name]


def detect_geometry(config: dict[str, Any], name: str = "", explicit: str | None = None) -> VideoGeometry:
    """The geometry of a checkpoint from its config.json dict and name (see the module docstring)."""
    if explicit:
        return get_geometry(explicit)
    if config.get("mm_newline_position") == NEWLINE_GRID:
        return GEOMETRIES[LLAVA_VID]
    names = (name, str(config.get("_name_or_path", "")))
    if any(_VIDEO_NAME.search(n) for n in names if n):
        return GEOMETRIES[LLAVA_VID]
    return GEOMETRIES[LLAVA_ONEVISION]


@dataclass(frozen=True)
class FramePlan:
    """Frames to decode and the timing ``llava_vid`` reports in its time instruction."""

    indices: list[int]
    frame_time: str  # "0.00s,1.00s,..." as llava_vid formats it
    video_time: float  # seconds


def llava_vid_frame_plan(total_frames: int, avg_fps: float, max_frames_num: int, video_fps: int = 1, force_sample: bool = False) -> FramePlan:
    """``llava_vid.load_video``'s sampling: one frame per ``round(avg_fps / video_fps)`` frames,
    or ``max_frames_num`` uniformly spaced frames when that gives more (or ``force_sample``).

    The frame times reproduce its formatting, including that the 1-fps times divide the index by
    the step (not by the frame rate).
    """
    if total_frames < 1:
        raise ValueError("video has no frames")
    if max_frames_num < 1:
        raise ValueError(f"max_frames_num={max_frames_num} must be at least 1")
    step = max(1, round(avg_fps / video_fps))
    indices = list(range(0, total_frames, step))
    times = [i / step for i in indices]
    if len(indices) > max_frames_num or force_sample:
        indices = np.linspace(0, total_frames - 1, max_frames_num, dtype=int).tolist()
        times = [i / avg_fps for i in indices]
    return FramePlan(indices, ",".join(f"{t:.2f}s" for t in times), total_frames / avg_fps)


def time_instruction(plan: FramePlan) -> str:
    """The sentence ``llava_vid`` prepends to the question when ``add_time_instruction`` is on."""
    return (
        f"The video lasts for {plan.video_time:.2f} seconds, and {len(plan.indices)} frames are uniformly sampled from it. "
        f"These frames are located at {plan.frame_time}.Please answer the following questions related to this video."
    )
