"""Intermediate supervision for training the embedded default model (training only, never saved).

From scratch, a single answer token per question is a weak signal for a model that must first
learn to see: training sat at chance for hundreds of steps. SynthVQA knows what is where
(``Sample.layout``), so the trainer also supervises two intermediate places with small linear
heads that are thrown away afterwards:

- every un-pooled patch token out of the projector predicts the share of its pixels that are
  background or each colour, and background or each shape (soft cross-entropy), so the vision
  tower learns colour, shape and coverage per patch. Most patches are background, so on its own
  that loss barely rewards shape: the first trained model's tower never learned it (static shape
  questions near chance, a linear probe of its object tokens at 60%). Optionally
  (``--object-shape-weight``) the shape term is repeated over object patches alone;
- optionally (``--position-targets``) every patch token also predicts its own row and column. A
  linear probe of that model's pooled tokens found the cell only 24% of the time (of 49): with
  the position lost, a moving object's tokens cannot say where it went;
- optionally (``--object-summary-weight``) each object visible in a frame is summarised by the
  coverage-weighted mean of the pooled video tokens it covers, as the language model receives
  them, and that summary predicts the object's shape and colour. A shape is a property of the
  whole object, not of one patch (an interior patch is plain colour), so a per-patch target asks
  the tower for something it cannot see locally; the summary only asks that the object's tokens
  together say it. The tower alone learns it this way (a throwaway pilot: 86% shape on single
  frames after 1500 steps, where the per-patch shape loss stayed at chance for 500);
- every pooled video token, at a middle layer of the language model, predicts whether an object
  in its cell appears at that frame (it was not visible in the previous frame) and whether the
  token is the first such cell in raster order (one token per appearance event), and in which
  direction the object covering it moves (or that it stays still): the temporal facts that the
  order, counting, needle and motion questions are built on.

The checkpoint is an ordinary LLaVA-OneVision; nothing here changes how it is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tokbench.tasks.synthvqa.generate import COLOURS, DIRECTIONS, SHAPES, Sample

COLOUR_NAMES = tuple(COLOURS)
MIN_CELL_PIXELS = 16  # an object counts as present in a pooled cell from this many pixels
STILL = len(DIRECTIONS)  # motion class of an object that does not move
MIN_TRAVEL = 4  # px of centroid travel from which an object counts as moving
FIRST_MOTION_FRAME = 3  # earlier frames have too little history to tell a direction
IGNORE = -100
MIN_SUMMARY_COVERAGE = 0.2  # cells' worth of an object (64 px of a 16 px cell) before it is summarised


def object_cell_pixels(sample: Sample, cell: int) -> np.ndarray:
    """[objects, T, cells] int: how many pixels of each ``cell`` x ``cell`` cell each object paints."""
    objects = len(sample.objects)
    frames, height, width = sample.layout.shape
    painted = sample.layout[None] == np.arange(1, objects + 1)[:, None, None, None]  # [objects, T, H, W]
    cells = painted.reshape(objects, frames, height // cell, cell, width // cell, cell).sum(axis=(3, 5))
    return cells.reshape(objects, frames, -1)


def object_visibility(sample: Sample) -> np.ndarray:
    """[objects, T] bool: whether each object is painted anywhere in each frame."""
    frames = sample.layout.reshape(sample.layout.shape[0], -1)
    return (frames[None] == np.arange(1, len(sample.objects) + 1)[:, None, None]).any(-1)


def _object_classes(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Colour and shape class per layout value (0 = background, then 1 + index in COLOURS / SHAPES)."""
    colours = [0] + [1 + COLOUR_NAMES.index(colour) for _, colour in sample.objects]
    shapes = [0] + [1 + SHAPES.index(shape) for shape, _ in sample.objects]
    return np.array(colours), np.array(shapes)


def _cell_shares(labels: np.ndarray, classes: int, cell: int) -> np.ndarray:
    """[T, H, W] class labels -> [T, cells, classes]: the share of each class in each cell."""
    frames, height, width = labels.shape
    one_hot = np.eye(classes, dtype=np.float32)[labels]
    grid = one_hot.reshape(frames, height // cell, cell, width // cell, cell, classes)
    return grid.mean(axis=(2, 4)).reshape(frames, -1, classes)


def patch_targets(samples: Sequence[Sample], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft colour [B*T, P, 1+colours] and shape [B*T, P, 1+shapes] targets per patch token."""
    colour_rows, shape_rows = [], []
    for sample in samples:
        colour_of, shape_of = _object_classes(sample)
        colour_rows.append(_cell_shares(colour_of[sample.layout], 1 + len(COLOUR_NAMES), patch))
        shape_rows.append(_cell_shares(shape_of[sample.layout], 1 + len(SHAPES), patch))
    return torch.from_numpy(np.concatenate(colour_rows)), torch.from_numpy(np.concatenate(shape_rows))


def _motion_class(layout: np.ndarray, value: int) -> int:
    """Direction index (DIRECTIONS) of the object painted with ``value``, or STILL."""
    frames = [np.argwhere(frame == value) for frame in layout]
    seen = [f.mean(0) for f in frames if len(f)]
    dy, dx = seen[-1] - seen[0]
    if max(abs(dy), abs(dx)) < MIN_TRAVEL:
        return STILL
    if abs(dx) >= abs(dy):
        return DIRECTIONS.index("right" if dx > 0 else "left")
    return DIRECTIONS.index("down" if dy > 0 else "up")


def appearance_targets(
    samples: Sequence[Sample], cell: int, onsets_from_frame: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pooled video token [B, T*cells]: an object appears here at this frame (0/1); first such
    cell (0/1); motion class of the object here (IGNORE on background and the first frames).

    Frame 0 has no previous frame, so by default every object there "appears". With
    ``onsets_from_frame`` = 1 both flags are IGNORE in frame 0, and the positives left are the
    objects that were not there a frame before: the needle, each flash, each later order object."""
    onset_rows, leader_rows, motion_rows = [], [], []
    for sample in samples:
        layout = sample.layout
        objects = len(sample.objects)
        present = object_cell_pixels(sample, cell) >= MIN_CELL_PIXELS  # [objects, T, cells]
        visible = object_visibility(sample)
        appears = visible & ~np.concatenate([np.zeros((objects, 1), bool), visible[:, :-1]], axis=1)
        onset = present & appears[:, :, None]
        leader = onset & (np.cumsum(onset, axis=2) == 1)
        motion = np.full(present.shape[1:], IGNORE)
        for i in range(objects):
            motion[present[i]] = _motion_class(layout, i + 1)
        motion[:FIRST_MOTION_FRAME] = IGNORE
        onset_rows.append(_unflag_first_frames(onset.any(0), onsets_from_frame))
        leader_rows.append(_unflag_first_frames(leader.any(0), onsets_from_frame))
        motion_rows.append(motion.reshape(-1))
    onset, leader = (torch.from_numpy(np.stack(rows)) for rows in (onset_rows, leader_rows))
    return onset, leader, torch.from_numpy(np.stack(motion_rows))


def _unflag_first_frames(flags: np.ndarray, frames: int) -> np.ndarray:
    """[T, cells] bool -> [T * cells] float32 flags, IGNORE in the first ``frames`` frames."""
    values = flags.astype(np.float32)
    values[:frames] = IGNORE
    return values.reshape(-1)


def object_cell_coverage(samples: Sequence[Sample], cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coverage [B, O, T * cells] (the share of each pooled cell's pixels that object ``o`` paints,
    O = the most objects in a sample) and its shape and colour classes [B, O] (IGNORE for padding)."""
    most = max(len(sample.objects) for sample in samples)
    frames, height, width = samples[0].layout.shape
    coverage = np.zeros((len(samples), most, frames * (height // cell) * (width // cell)), np.float32)
    shapes = np.full((len(samples), most), IGNORE)
    colours = np.full((len(samples), most), IGNORE)
    for b, sample in enumerate(samples):
        coverage[b, : len(sample.objects)] = object_cell_pixels(sample, cell).reshape(len(sample.objects), -1) / cell**2
        for o, (shape, colour) in enumerate(sample.objects):
            shapes[b, o], colours[b, o] = SHAPES.index(shape), COLOUR_NAMES.index(colour)
    return torch.from_numpy(coverage), torch.from_numpy(shapes), torch.from_numpy(colours)


def _soft_cross_entropy(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    return -(shares * F.log_softmax(logits, -1)).sum(-1)


class AuxiliaryHeads(torch.nn.Module):
    """Linear read-outs of projected patch tokens (colour, shape; with ``grid``, also the row and
    column in a ``grid`` x ``grid`` patch grid) and of mid-LLM video tokens (onset, first cell,
    motion); both live in the language model's width. ``object_shape_weight`` > 0 adds the shape
    loss once more over object patches alone. ``object_summary_weight`` > 0 adds, with that
    weight, the shape and colour of each object read from its coverage-weighted mean video token
    (layer-normalised, so the loss cannot be lowered by growing the tokens). The extras are off
    by default; the committed checkpoint was trained with the summaries on (weight 0.5, then 2)."""

    def __init__(
        self,
        width: int,
        grid: int | None = None,
        object_shape_weight: float = 0.0,
        object_summary_weight: float = 0.0,
    ):
        super().__init__()
        self.colour = torch.nn.Linear(width, 1 + len(COLOUR_NAMES))
        self.shape = torch.nn.Linear(width, 1 + len(SHAPES))
        self.appearance = torch.nn.Linear(width, 2)
        self.motion = torch.nn.Linear(width, len(DIRECTIONS) + 1)
        self.position = torch.nn.ModuleList([torch.nn.Linear(width, grid), torch.nn.Linear(width, grid)]) if grid else None
        self.object_shape_weight = object_shape_weight
        self.summary = (
            torch.nn.Sequential(
                torch.nn.LayerNorm(width, elementwise_affine=False), torch.nn.Linear(width, len(SHAPES) + len(COLOUR_NAMES))
            )
            if object_summary_weight
            else None
        )
        self.object_summary_weight = object_summary_weight

    def patch_loss(self, patch_tokens: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Per patch token [B*T, P, D] (P patches in raster order): soft cross-entropy of the
        colour and shape shares, plus the extras switched on at construction."""
        colour_loss = _soft_cross_entropy(self.colour(patch_tokens), colour).mean()
        shape_losses = _soft_cross_entropy(self.shape(patch_tokens), shape)
        loss = colour_loss + shape_losses.mean()
        if self.object_shape_weight:
            on_object = shape[..., 0] < 0.5  # patches an object covers most of
            if on_object.any():
                loss = loss + self.object_shape_weight * shape_losses[on_object].mean()
        if self.position is not None:
            row_head, column_head = self.position
            grid = row_head.out_features
            cells = torch.arange(patch_tokens.shape[1]).expand(patch_tokens.shape[0], -1).flatten()
            loss = loss + F.cross_entropy(row_head(patch_tokens).flatten(0, 1), cells // grid)
            loss = loss + F.cross_entropy(column_head(patch_tokens).flatten(0, 1), cells % grid)
        return loss

    def token_loss(
        self, video_hidden: torch.Tensor, onset: torch.Tensor, leader: torch.Tensor, motion: torch.Tensor
    ) -> torch.Tensor:
        """Per video token [B, N, D]: binary cross-entropy of the onset and first-cell flags (the
        rare positives up-weighted to balance the rest; tokens flagged IGNORE left out) plus
        cross-entropy of the motion class."""
        flags = torch.stack([onset, leader], -1)
        labelled = flags[..., 0] != IGNORE  # the same tokens are ignored in both flags
        flags, logits = flags[labelled], self.appearance(video_hidden)[labelled]  # [M, 2]
        positives = flags.sum(0)
        balance = ((len(flags) - positives) / positives.clamp(min=1)).clamp(1, 100)
        flag_loss = F.binary_cross_entropy_with_logits(logits, flags, pos_weight=balance)
        if not (motion != IGNORE).any():
            return flag_loss
        return flag_loss + F.cross_entropy(
            self.motion(video_hidden).flatten(0, 1), motion.flatten(), ignore_index=IGNORE
        )

    def object_loss(
        self,
        video_tokens: torch.Tensor,
        frames: int,
        coverage: torch.Tensor,
        shapes: torch.Tensor,
        colours: torch.Tensor,
    ) -> torch.Tensor:
        """Weighted cross-entropy of the shape and colour of every object in every frame where it
        covers at least MIN_SUMMARY_COVERAGE of a cell, read from the coverage-weighted mean of that
        frame's video tokens [B, frames * cells, D] (``coverage`` [B, O, frames * cells] and the
        classes [B, O] as ``object_cell_coverage`` gives them)."""
        if self.summary is None:
            raise RuntimeError("these heads were built with object_summary_weight 0")
        batch, objects, _ = coverage.shape
        per_frame = coverage.view(batch, objects, frames, -1)  # [B, O, T, cells]
        tokens = video_tokens.reshape(batch, frames, per_frame.shape[-1], -1)  # [B, T, cells, D]
        mass = per_frame.sum(-1)  # [B, O, T]
        summed = torch.einsum("botc,btcd->botd", per_frame, tokens)
        visible = (mass >= MIN_SUMMARY_COVERAGE) & (shapes != IGNORE)[..., None]
        if not visible.any():
            return video_tokens.new_zeros(())
        logits = self.summary(summed[visible] / mass[visible][:, None])
        shape_target = shapes[..., None].expand(-1, -1, frames)[visible]
        colour_target = colours[..., None].expand(-1, -1, frames)[visible]
        shape_loss = F.cross_entropy(logits[:, : len(SHAPES)], shape_target)
        return self.object_summary_weight * (shape_loss + F.cross_entropy(logits[:, len(SHAPES) :], colour_target))
