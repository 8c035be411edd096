"""The trainer's intermediate supervision says what the SynthVQA questions are about."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedded.train_targets import (
    IGNORE,
    MIN_CELL_PIXELS,
    STILL,
    AuxiliaryHeads,
    appearance_targets,
    object_cell_coverage,
    object_cell_pixels,
    object_visibility,
    patch_targets,
)
from tokbench.tasks.synthvqa.generate import COLOURS, DIRECTIONS, LETTERS, SHAPES, render_sample

SEEDS = range(5, 11)
CELL = 16
PATCH = 8


def _answer_text(sample) -> str:
    return sample.options[LETTERS.index(sample.answer)]


def test_layout_marks_exactly_the_pixels_painted_with_each_objects_colour():
    sample = render_sample(3, "order")
    for index, (_shape, colour) in enumerate(sample.objects):
        painted = sample.layout == index + 1
        assert painted.any()
        assert (sample.frames[painted] == np.array(COLOURS[colour], np.uint8)).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_one_first_cell_flag_per_flash(seed):
    sample = render_sample(seed, "counting")
    onset, leader, _ = appearance_targets([sample], CELL)
    assert int(leader.sum()) == int(_answer_text(sample))
    assert bool((onset >= leader).all())


def _needle_seen_a_frame_before(sample, cells: int) -> np.ndarray:
    """[(T - 1) * cells] bool: True in frames 1 .. T-1 where the needle was visible the frame before."""
    visible = object_visibility(sample)[0]
    return np.repeat(visible[:-1], cells)


@pytest.mark.parametrize("seed", SEEDS)
def test_onsets_from_frame_1_flag_only_the_needle_in_a_needle_scene(seed):
    sample = render_sample(seed, "needle")
    cells = (sample.layout.shape[1] // CELL) ** 2
    onset, leader, _ = appearance_targets([sample], CELL, onsets_from_frame=1)
    assert bool((onset[0, :cells] == IGNORE).all() and (leader[0, :cells] == IGNORE).all())
    flagged = (onset[0, cells:] == 1).numpy()  # frames 1 .. T-1
    needle = object_cell_pixels(sample, CELL)[0, 1:].reshape(-1) >= MIN_CELL_PIXELS  # the needle is object 0
    assert flagged.any() and (flagged == (needle & ~_needle_seen_a_frame_before(sample, cells))).all()
    assert int((leader[0, cells:] == 1).sum()) == 1  # one appearance event
    default_onset, _, _ = appearance_targets([sample], CELL)
    assert bool((default_onset[0, :cells] != IGNORE).all())  # by default frame 0 is supervised too


@pytest.mark.parametrize("seed", SEEDS)
def test_first_cells_of_an_order_scene_start_with_the_answer(seed):
    sample = render_sample(seed, "order")
    _, leader, _ = appearance_targets([sample], CELL)
    cells = (sample.layout.shape[1] // CELL) ** 2
    first_frame = int(leader[0].nonzero()[0]) // cells
    colour_there = sample.layout[first_frame][sample.layout[first_frame] > 0]
    assert sample.objects[int(colour_there[0]) - 1][1] == _answer_text(sample)


@pytest.mark.parametrize("seed", SEEDS)
def test_motion_class_of_a_moving_object_is_its_direction(seed):
    sample = render_sample(seed, "motion")
    _, _, motion = appearance_targets([sample], CELL)
    labelled = motion[motion != IGNORE]
    assert len(labelled) > 0
    assert set(labelled.tolist()) == {DIRECTIONS.index(_answer_text(sample))}


def test_static_objects_are_still_and_background_is_ignored():
    sample = render_sample(4, "static")
    _, _, motion = appearance_targets([sample], CELL)
    assert set(motion[motion != IGNORE].tolist()) == {STILL}
    assert (motion == IGNORE).float().mean() > 0.5


def test_patch_targets_are_shares_that_match_the_layout():
    sample = render_sample(5, "static")
    colour, shape = patch_targets([sample], PATCH)
    frames, size = sample.layout.shape[:2]
    assert colour.shape == (frames, (size // PATCH) ** 2, 1 + len(COLOURS))
    assert torch.allclose(colour.sum(-1), torch.ones(())) and torch.allclose(shape.sum(-1), torch.ones(()))
    object_share = float(1 - colour[..., 0].mean())
    assert object_share == pytest.approx(float((sample.layout > 0).mean()), abs=1e-6)


def test_auxiliary_losses_are_finite_and_reach_every_head():
    torch.manual_seed(0)
    samples = [render_sample(seed, family) for seed, family in [(1, "counting"), (2, "motion")]]
    heads = AuxiliaryHeads(width=16, grid=112 // PATCH, object_shape_weight=3.0)
    colour, shape = patch_targets(samples, PATCH)
    onset, leader, motion = appearance_targets(samples, CELL)
    loss = heads.patch_loss(torch.randn(*colour.shape[:2], 16), colour, shape) + heads.token_loss(
        torch.randn(*onset.shape, 16), onset, leader, motion
    )
    onset, leader, motion = appearance_targets(samples, CELL, onsets_from_frame=1)
    loss = loss + heads.token_loss(torch.randn(*onset.shape, 16), onset, leader, motion)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def test_patch_extras_add_to_the_default_loss_only_when_asked():
    torch.manual_seed(0)
    samples = [render_sample(3, "static")]
    colour, shape = patch_targets(samples, PATCH)
    tokens = torch.randn(*colour.shape[:2], 16)
    plain = AuxiliaryHeads(width=16)
    assert plain.position is None
    extra = AuxiliaryHeads(width=16, grid=112 // PATCH, object_shape_weight=3.0)
    extra.load_state_dict(plain.state_dict(), strict=False)
    assert extra.patch_loss(tokens, colour, shape) > plain.patch_loss(tokens, colour, shape)


def test_object_coverage_counts_each_objects_pixels_per_cell_and_pads_missing_objects():
    samples = [render_sample(7, "needle"), render_sample(8, "static")]
    coverage, shapes, colours = object_cell_coverage(samples, CELL)
    frames = samples[0].layout.shape[0]
    most = max(len(s.objects) for s in samples)
    assert coverage.shape == (2, most, frames * (112 // CELL) ** 2)
    for b, sample in enumerate(samples):
        for o, (shape, colour) in enumerate(sample.objects):
            painted = (sample.layout == o + 1).reshape(frames, -1).sum(-1)
            per_frame = coverage[b, o].view(frames, -1).sum(-1) * CELL * CELL
            assert torch.allclose(per_frame, torch.from_numpy(painted).float())
            assert (int(shapes[b, o]), int(colours[b, o])) == (SHAPES.index(shape), list(COLOURS).index(colour))
        assert (shapes[b, len(sample.objects) :] == IGNORE).all() and (coverage[b, len(sample.objects) :] == 0).all()


def test_object_summary_reads_only_the_cells_an_object_covers():
    torch.manual_seed(0)
    samples = [render_sample(7, "needle"), render_sample(8, "motion")]
    coverage, shapes, colours = object_cell_coverage(samples, CELL)
    frames = samples[0].layout.shape[0]
    heads = AuxiliaryHeads(width=16, object_summary_weight=0.5)
    tokens = torch.randn(2, coverage.shape[-1], 16, requires_grad=True)
    loss = heads.object_loss(tokens, frames, coverage, shapes, colours)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.summary.parameters())
    covered = coverage.sum(1) > 0  # [B, tokens]: some object paints part of this cell
    assert (tokens.grad.abs().sum(-1) > 0).eq(covered).all()
    with pytest.raises(RuntimeError, match="object_summary_weight"):
        AuxiliaryHeads(width=16).object_loss(tokens, frames, coverage, shapes, colours)


def test_object_summary_loss_falls_when_tokens_carry_the_objects_classes():
    """A head fitted to tokens that name the object covering them must beat chance by far; on
    tokens that say nothing it cannot, so the loss measures what the tokens hold."""
    torch.manual_seed(0)
    samples = [render_sample(seed, family) for seed, family in [(1, "static"), (2, "order"), (3, "needle")]]
    coverage, shapes, colours = object_cell_coverage(samples, CELL)
    frames = samples[0].layout.shape[0]
    owner = coverage.argmax(1)  # [B, tokens]: the object covering most of each cell
    width = len(SHAPES) + len(COLOURS)
    informative = torch.zeros(*owner.shape, width)
    for b in range(len(samples)):
        informative[b, :, : len(SHAPES)] = torch.nn.functional.one_hot(shapes[b].clamp(min=0)[owner[b]], len(SHAPES))
        informative[b, :, len(SHAPES) :] = torch.nn.functional.one_hot(colours[b].clamp(min=0)[owner[b]], len(COLOURS))

    def fitted_loss(tokens: torch.Tensor) -> float:
        heads = AuxiliaryHeads(width=width, object_summary_weight=1.0)
        optimiser = torch.optim.Adam(heads.parameters(), lr=0.05)
        for _ in range(150):
            optimiser.zero_grad()
            loss = heads.object_loss(tokens, frames, coverage, shapes, colours)
            loss.backward()
            optimiser.step()
        return float(loss.detach())

    chance = float(np.log(len(SHAPES)) + np.log(len(COLOURS)))
    assert fitted_loss(informative) < 0.2 * chance
    assert fitted_loss(torch.randn(1, 1, width).expand_as(informative).contiguous()) > 0.5 * chance
