"""Videos stored as folders of frame images (MVBench's episodic_reasoning and other frame dumps).

A folder of ``.jpg`` / ``.jpeg`` / ``.png`` files is read as a video whose frames are the images in
natural name order (``2.jpg`` before ``10.jpg``), sampled uniformly like a decoded video.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def frame_files(folder: str | Path) -> list[Path]:
    """The folder's frame images in natural name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)])


def load_frame_folder(folder: str | Path, indices_for) -> np.ndarray:
    """Frames ``indices_for(total)`` of a frame folder as uint8 RGB [T, H, W, 3]."""
    from PIL import Image

    files = frame_files(folder)
    if not files:
        raise ValueError(f"frame folder has no {'/'.join(FRAME_SUFFIXES)} images: {folder}")
    frames = []
    for index in indices_for(len(files)):
        with Image.open(files[index]) as image:
            frames.append(np.asarray(image.convert("RGB")))
    if len({frame.shape for frame in frames}) > 1:
        raise ValueError(f"frame folder mixes image sizes: {folder}")
    return np.stack(frames)
