"""Video decoding: uniform frame sampling with PyAV, with clear errors for bad files.

Sampling follows lmms-eval's reference models: ``np.linspace(0, total - 1, num_frames,
dtype=int)`` over the decoded frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video that cannot be used: missing, unreadable, or without frames."""


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """Frame indices lmms-eval samples: ``num_frames`` evenly spaced over ``total`` frames."""
    if total < 1:
        raise VideoError("video has no frames")
    if num_frames < 1:
        raise VideoError(f"max_frames_num={num_frames} must be at least 1")
    return np.linspace(0, total - 1, num_frames, dtype=int)


def decode_all(path: str | Path) -> np.ndarray:
    """Every frame of a video as uint8 RGB [N, H, W, 3]."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {path}")
            frames = _decode_frames(container)
    except VideoError:
        raise
    except EOFError:  # a container that ends before its first frame
        raise VideoError(f"video has no frames: {path}") from None
    except Exception as exc:  # PyAV raises several error types for corrupt containers
        raise VideoError(f"cannot decode video {path}: {exc.__class__.__name__}: {exc}") from None
    if not frames:
        raise VideoError(f"video has no frames: {path}")
    return np.stack(frames)


def _decode_frames(container) -> list[np.ndarray]:
    """Decode every frame; an end of file before any frame means the video has none."""
    frames: list[np.ndarray] = []
    try:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    except EOFError:
        pass
    return frames


def load_frames(path: str | Path, num_frames: int) -> np.ndarray:
    """``num_frames`` uniformly sampled frames of a video (a file or a folder of frames), uint8 RGB [T, H, W, 3]."""
    if Path(path).is_dir():
        from harness.frame_folder import load_frame_folder

        try:
            return load_frame_folder(path, lambda total: uniform_indices(total, num_frames))
        except (OSError, ValueError) as exc:
            raise VideoError(f"cannot read frame folder {path}: {exc}") from None
    frames = decode_all(path)
    return frames[uniform_indices(len(frames), num_frames)]
