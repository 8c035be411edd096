"""The frame-count curriculum of ``harness.train_tiny``: short clips first, full videos last.

From scratch, with 16 frames (785 video tokens) in front of a 30-token question, the answer
position's untrained attention is spread so thin that the question barely reaches it, and
training sat at chance for 600+ steps even with intermediate supervision. The skills every
family shares (read the question, find the object, name its colour or shape, find that option's
letter) are learned fastest on short clips, so training runs in stages:

0. optionally (``--vision-steps``, off by default), the vision tower and projector alone, on
   single frames of every family, trained only on the per-patch targets of
   ``harness.train_targets``: a ViT from scratch learns shape slowly, and a step without the
   language model costs a fifth of a video step. It taught the tower shape, but in every run
   tried so far (tower trained on, or frozen with ``--freeze-vision``) the language model then
   stayed at chance in the later stages (see the README);
1. 1 frame, ``static`` and ``small_object`` only (one frame holds their whole answer);
2. a few frames, every family whose answer survives cutting the video down to its key frames
   (``static``, ``small_object``, ``motion``, ``needle``, ``order``);
3. all frames, every family (what evaluation asks).

A clip keeps the video's key frames (first, last, and every frame at which some object appears
or disappears), so the answer to its question is unchanged: the needle stays in, the objects
of an order question still appear in the same order, a moving object still moves the same way.
The rest of the clip is filled with other frames drawn at random, in temporal order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.train_targets import object_visibility
from tasks.synthvqa.generate import FAMILIES, Sample

SINGLE_FRAME_FAMILIES = ("static", "small_object")
KEY_FRAME_FAMILIES = ("static", "small_object", "motion", "needle", "order")


@dataclass(frozen=True)
class Stage:
    """``steps`` training steps on clips of ``frames`` frames of the given families (on the vision
    tower and projector alone if ``vision_only``)."""

    frames: int
    families: tuple[str, ...]
    steps: int
    vision_only: bool = False


def stages(
    vision_steps: int,
    total_steps: int,
    single_frame_steps: int,
    short_clip_steps: int,
    short_frames: int,
    frames: int,
) -> list[Stage]:
    """The curriculum: ``vision_steps`` vision-only steps, then single-frame, short-clip and
    full-video stages of the whole model summing to ``total_steps``."""
    if single_frame_steps + short_clip_steps > total_steps:
        raise ValueError("the curriculum's single-frame and short-clip stages are longer than the whole run")
    plan = [
        Stage(1, FAMILIES, vision_steps, vision_only=True),
        Stage(1, SINGLE_FRAME_FAMILIES, single_frame_steps),
        Stage(short_frames, KEY_FRAME_FAMILIES, short_clip_steps),
        Stage(frames, FAMILIES, total_steps - single_frame_steps - short_clip_steps),
    ]
    return [stage for stage in plan if stage.steps > 0]


def stage_at(plan: Sequence[Stage], step: int) -> Stage:
    """The stage that training step ``step`` (0-based) belongs to."""
    end = 0
    for stage in plan:
        end += stage.steps
        if step < end:
            return stage
    return plan[-1]


def key_frames(sample: Sample) -> list[int]:
    """First and last frame, and every frame at which some object appears or disappears."""
    frames = sample.layout.shape[0]
    visible = object_visibility(sample)
    changes = np.flatnonzero((visible[:, 1:] != visible[:, :-1]).any(0)) + 1
    return sorted({0, frames - 1, *changes.tolist()})


def clip(sample: Sample, frames: int, rng: np.random.Generator) -> Sample:
    """``sample`` cut to ``frames`` frames that keep its key frames (all of its frames if it has
    that many or fewer). One frame is a single random frame (for families whose frames agree)."""
    total = sample.frames.shape[0]
    if frames >= total:
        return sample
    if frames == 1:
        keep = [int(rng.integers(total))]
    else:
        keys = key_frames(sample)
        if len(keys) > frames:
            raise ValueError(f"a {sample.family} sample has {len(keys)} key frames, more than a {frames}-frame clip")
        others = [t for t in range(total) if t not in keys]
        keep = sorted(keys + [others[int(i)] for i in rng.permutation(len(others))[: frames - len(keys)]])
    return dataclasses.replace(sample, frames=sample.frames[keep], layout=sample.layout[keep])
