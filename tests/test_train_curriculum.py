"""The trainer's frame-count curriculum: its stages, the families each clip length can hold, the
clips themselves (their answers survive the cut) and weighted family draws."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from embedded.train_curriculum import (
    COUNTING_KEY_FRAMES,
    KEY_FRAME_FAMILIES,
    SINGLE_FRAME_FAMILIES,
    clip,
    clip_families,
    draw_specs,
    key_frames,
    stage_at,
    stages,
)
from embedded.train_targets import object_visibility
from tokbench.tasks.synthvqa.generate import FAMILIES, render_spec, sample_specs


def test_stages_grow_the_clip_length_and_end_on_full_videos():
    plan = stages(vision_steps=0, total_steps=100, single_frame_steps=10, short_clip_steps=[20, 30, 15],
                  short_frames=[5, 8, 12], frames=16)
    assert [(s.frames, s.steps) for s in plan] == [(1, 10), (5, 20), (8, 30), (12, 15), (16, 25)]
    assert plan[0].families == SINGLE_FRAME_FAMILIES
    assert plan[1].families == plan[2].families == KEY_FRAME_FAMILIES
    assert plan[3].families == plan[4].families == FAMILIES  # counting's 10 key frames fit in 12
    assert stage_at(plan, 9).frames == 1 and stage_at(plan, 10).frames == 5 and stage_at(plan, 99).frames == 16


@pytest.mark.parametrize(
    "steps, lengths, message",
    [([50, 60], [5, 8], "longer than the whole run"), ([10], [5, 8], "step counts"), ([10], [16], "between 2")],
)
def test_stages_reject_an_impossible_plan(steps, lengths, message):
    with pytest.raises(ValueError, match=message):
        stages(0, 100, 10, steps, lengths, 16)


def test_a_clip_keeps_every_key_frame_so_its_answer_stands():
    for spec in sample_specs("train", 36):
        sample = render_spec(spec)
        length = 12 if sample.family == "counting" else 5
        assert sample.family in clip_families(length)
        short = clip(sample, length, np.random.default_rng(spec.index))
        assert short.frames.shape[0] == length
        # every appearance and disappearance (flash, needle, order) is still there, in order
        full_changes = np.diff(object_visibility(sample).astype(int), axis=1)
        short_changes = np.diff(object_visibility(short).astype(int), axis=1)
        assert (np.abs(full_changes).sum(1) == np.abs(short_changes).sum(1)).all()
        assert short.answer == sample.answer and short.question == sample.question
    assert len(key_frames(render_spec(next(s for s in sample_specs("train", 6) if s.family == "counting")))) <= COUNTING_KEY_FRAMES


def test_a_clip_too_short_for_its_key_frames_is_an_error():
    counting = next(render_spec(s) for s in sample_specs("train", 60)
                    if s.family == "counting" and len(key_frames(render_spec(s))) > 5)
    with pytest.raises(ValueError, match="key frames"):
        clip(counting, 5, np.random.default_rng(0))


def test_draw_specs_follows_the_family_weights():
    rng = np.random.default_rng(0)
    specs = sample_specs("train", 60_000)
    drawn = draw_specs(specs, KEY_FRAME_FAMILIES, {"motion": 3.0, "needle": 2.0}, 4000, rng)
    counts = collections.Counter(spec.family for spec in drawn)
    assert set(counts) == set(KEY_FRAME_FAMILIES)
    assert counts["motion"] / 4000 == pytest.approx(3 / 8, abs=0.03)
    assert counts["needle"] / 4000 == pytest.approx(2 / 8, abs=0.03)
    assert counts["static"] / 4000 == pytest.approx(1 / 8, abs=0.03)
    assert len({spec.index for spec in drawn}) == 4000  # no sample drawn twice


def test_draw_specs_without_weights_takes_the_families_round_robin():
    drawn = draw_specs(sample_specs("train", 60), ("motion", "order"), {}, 4, np.random.default_rng(0))
    assert [spec.family for spec in drawn] == ["motion", "order", "motion", "order"]
