"""Folders of frame images read as videos: natural order, uniform sampling, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tokbench.harness.video import VideoError, read_clip


def _folder(path, count: int):
    path.mkdir()
    for k in range(count):  # frame k is filled with the value 10 * k; names 1.png .. N.png sort wrongly as text
        Image.fromarray(np.full((8, 8, 3), 10 * k, dtype=np.uint8)).save(path / f"{k + 1}.png")
    return path


def test_frames_are_read_in_natural_order_and_sampled_uniformly(tmp_path):
    frames = read_clip(_folder(tmp_path / "clip", 12), 4).frames
    assert frames.shape == (4, 8, 8, 3) and frames.dtype == np.uint8
    assert [int(f[0, 0, 0]) for f in frames] == [10 * k for k in np.linspace(0, 11, 4, dtype=int)]


def test_a_folder_without_frames_is_a_video_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    with pytest.raises(VideoError, match="frame folder"):
        read_clip(tmp_path / "empty", 4)
