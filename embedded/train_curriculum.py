"""The frame-count curriculum of ``embedded.train_tiny``: short clips first, full videos last.

From scratch, with 16 frames (785 video tokens) in front of a 30-token question, the answer
position's untrained attention is spread so thin that the question barely reaches it, and
training sat at chance for 600+ steps even with intermediate supervision. The skills every
family shares (read the question, find the object, name its colour or shape, find that option's
letter) are learned fastest on short clips, so training runs in stages:

0. optionally (``--vision-steps``, off by default), the vision tower and projector alone, on
   single frames of every family, trained only on the per-patch targets (and, when on, the
   object summaries) of ``embedded.train_targets``: a ViT from scratch learns shape slowly, and
   a step without the language model costs a fifth of a video step. It taught the tower shape,
   but from scratch (tower trained on, or frozen with ``--freeze-vision``) the language model
   then stayed at chance in the later stages; in a run continuing a trained model (``--init``,
   run 9 in embedded/README.md) it recovered within a few hundred steps;
1. 1 frame, ``static`` and ``small_object`` only (one frame holds their whole answer);
2. one or more short-clip stages of growing length (say 5, then 8, then 12 frames), each on every
   family whose answer survives cutting the video down to that many frames: its key frames must
   fit (``static``, ``small_object``, ``motion``, ``needle`` and ``order`` have at most 5;
   ``counting`` up to 10). Going straight from 5 frames to 16 did not carry motion over; 5 then
   8 frames did (see embedded/README.md);
3. all frames, every family (what evaluation asks).

A clip keeps the video's key frames (first, last, and every frame at which some object appears
or disappears), so the answer to its question is unchanged: the needle stays in, the objects
of an order question still appear in the same order, a moving object still moves the same way.
The rest of the clip is filled with other frames drawn at random, in temporal order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embedded.train_targets import object_visibility
from tokbench.tasks.synthvqa.generate import COUNTS, FAMILIES, Sample, SampleSpec

SINGLE_FRAME_FAMILIES = ("static", "small_object")
KEY_FRAME_FAMILIES = ("static", "small_object", "motion", "needle", "order")
COUNTING_KEY_FRAMES = 2 + 2 * int(COUNTS[-1])  # first and last frame, plus on and off for each flash


@dataclass(frozen=True)
class Stage:
    """``steps`` training steps on clips of ``frames`` frames of the given families (on the vision
    tower and projector alone if ``vision_only``)."""

    frames: int
    families: tuple[str, ...]
    steps: int
    vision_only: bool = False


def clip_families(frames: int) -> tuple[str, ...]:
    """The families whose key frames fit in a clip of ``frames`` frames."""
    return FAMILIES if frames >= COUNTING_KEY_FRAMES else KEY_FRAME_FAMILIES


def stages(
    vision_steps: int,
    total_steps: int,
    single_frame_steps: int,
    short_clip_steps: Sequence[int],
    short_frames: Sequence[int],
    frames: int,
) -> list[Stage]:
    """The curriculum: ``vision_steps`` vision-only steps, then a single-frame stage, one short-clip
    stage per entry of ``short_frames`` (``short_clip_steps`` steps each) and a full-video stage,
    all of the whole model and summing to ``total_steps``."""
    if len(short_clip_steps) != len(short_frames):
        raise ValueError(f"{len(short_frames)} short-clip lengths but {len(short_clip_steps)} step counts")
    if not all(1 < length < frames for length in short_frames):
        raise ValueError(f"short clips must have between 2 and {frames - 1} frames, got {list(short_frames)}")
    full_steps = total_steps - single_frame_steps - sum(short_clip_steps)
    if full_steps < 0:
        raise ValueError("the curriculum's single-frame and short-clip stages are longer than the whole run")
    plan = [
        Stage(1, FAMILIES, vision_steps, vision_only=True),
        Stage(1, SINGLE_FRAME_FAMILIES, single_frame_steps),
        *(Stage(length, clip_families(length), steps) for length, steps in zip(short_frames, short_clip_steps)),
        Stage(frames, FAMILIES, full_steps),
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


def draw_specs(
    specs: Iterator[SampleSpec],
    families: Sequence[str],
    weights: Mapping[str, float],
    count: int,
    rng: np.random.Generator,
) -> list[SampleSpec]:
    """The next ``count`` training samples of ``families``: in the order ``specs`` yields them
    (families round-robin), or, given ``weights`` (a family's relative share, 1 for those not
    named), each sample's family drawn at random first."""
    if not weights:
        return [next(s for s in specs if s.family in families) for _ in range(count)]
    share = np.array([weights.get(family, 1.0) for family in families])
    drawn = rng.choice(len(families), size=count, p=share / share.sum())
    return [next(s for s in specs if s.family == families[i]) for i in drawn]


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
