"""Video decoding: uniform frame sampling with PyAV, memory bounded by the sampled frames.

Indices follow lmms-eval's reference models for LLaVA (``llava_hf`` and ``llava_onevision``'s
default decord reader, ``load_video``): ``np.linspace(0, total - 1, num_frames, dtype=int)`` over
the video's ``total`` frames. When more frames are asked than the video has, those readers
repeat frames (the model always sees ``num_frames`` frames); lmms-eval's PyAV ``read_video``
instead returns ``min(total, num_frames)`` distinct frames. We follow the reference models:
frames repeat, and ``VideoClip.total_frames`` records how many the video had so the row can say
so (``SampleRecord.video_frames``).

Reading never holds the video: one pass over the packets (no decoding) gives every frame's
timestamp and the keyframes; each sampled frame is then reached by seeking to the keyframe at or
before it and decoding forward (consecutive samples inside one keyframe interval share a pass).
Only the sampled frames are converted to RGB, straight into the output array. Containers whose
packets carry no timestamps are decoded sequentially instead, still keeping only the sampled
frames. ``benchmarks/bench_video_reader.py`` measures both memory and time against lmms-eval's
readers.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class VideoError(ValueError):
    """A video that cannot be used: missing, unreadable, or without frames."""


@dataclass
class VideoClip:
    """The sampled frames of one video, uint8 RGB [T, H, W, 3], and where they came from."""

    frames: np.ndarray
    indices: np.ndarray  # index in the video of each returned frame (repeats when total < T)
    total_frames: int
    plan: Any = None  # the adapter's frame plan, when its prompt needs the frames' times (llava_vid)


class _NoTimestamps(Exception):
    """The container's packets or frames carry no timestamps: decode sequentially."""


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """Frame indices lmms-eval samples: ``num_frames`` evenly spaced over ``total`` frames."""
    if total < 1:
        raise VideoError("video has no frames")
    if num_frames < 1:
        raise VideoError(f"max_frames_num={num_frames} must be at least 1")
    return np.linspace(0, total - 1, num_frames, dtype=int)


def read_clip(path: str | Path, num_frames: int) -> VideoClip:
    """``num_frames`` uniformly sampled frames of a video, decoding only what they need."""
    import av

    path = Path(path)
    if num_frames < 1:
        raise VideoError(f"max_frames_num={num_frames} must be at least 1")
    if path.is_dir():
        return _read_frame_folder(path, num_frames)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            try:
                return _read_by_seeking(container, stream, num_frames)
            except _NoTimestamps:
                container.seek(0)
                return _read_sequentially(container, stream, num_frames)
    except VideoError as exc:
        raise VideoError(f"{exc}: {path}") from None
    except EOFError:  # a container that ends before its first frame
        raise VideoError(f"video has no frames: {path}") from None
    except Exception as exc:  # PyAV raises several error types for corrupt containers
        raise VideoError(f"cannot decode video {path}: {exc.__class__.__name__}: {exc}") from None


def check_video(path: str | Path) -> None:
    """Fail fast, without decoding, on a path that cannot be a video: missing, or a file whose
    container does not open or has no video stream (a command checks this before loading a model)."""
    import av

    path = Path(path)
    if path.is_dir():
        return
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream: {path}")
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises several error types for corrupt containers
        raise VideoError(f"cannot decode video {path}: {exc.__class__.__name__}: {exc}") from None


def _read_frame_folder(path: Path, num_frames: int) -> VideoClip:
    """A folder of frame images (``harness/frame_folder.py``) sampled like a decoded video."""
    from tokbench.harness.frame_folder import frame_files, load_frame_folder

    total = len(frame_files(path))
    try:
        indices = uniform_indices(total, num_frames)
        return VideoClip(load_frame_folder(path, lambda _: indices), indices, total)
    except VideoError as exc:
        raise VideoError(f"cannot read frame folder {path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise VideoError(f"cannot read frame folder {path}: {exc}") from None


def _packet_index(container, stream) -> tuple[list[int], list[int]]:
    """Timestamps of every frame in presentation order and of the keyframes (no decoding)."""
    stamps: list[int] = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        if packet.pts is None:
            raise _NoTimestamps
        stamps.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    if stamps and not keys:
        raise _NoTimestamps
    return sorted(stamps), sorted(keys)


class _Output:
    """The output array, filled frame by frame (a frame sampled twice is written twice)."""

    def __init__(self, indices: np.ndarray):
        self.indices = indices
        self.array: np.ndarray | None = None

    def put(self, index: int, frame) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        if self.array is None:
            self.array = np.empty((len(self.indices), *rgb.shape), dtype=rgb.dtype)
        self.array[self.indices == index] = rgb


def _read_by_seeking(container, stream, num_frames: int) -> VideoClip:
    stamps, keys = _packet_index(container, stream)
    if not stamps:
        raise VideoError("video has no frames")
    indices = uniform_indices(len(stamps), num_frames)
    output = _Output(indices)
    frames = None  # the decoder's frame iterator since the last seek
    position = None  # timestamp of the last decoded frame
    for index in np.unique(indices):
        target = stamps[index]
        key_at = max(bisect_right(keys, target) - 1, 0)
        if frames is None or position is None or position >= target or keys[key_at] > position:
            frames = _seek(container, stream, keys, key_at, target)
        for frame in frames:
            if frame.pts is None:
                raise _NoTimestamps
            position = frame.pts
            if position >= target:
                output.put(index, frame)
                break
        else:
            raise VideoError(f"frame {index} (pts {target}) does not decode")
    return VideoClip(output.array, indices, len(stamps))


def _seek(container, stream, keys: list[int], key_at: int, target: int):
    """Frames from keyframe ``keys[key_at]`` on, stepping back a keyframe while it lands after ``target``."""
    while True:
        container.seek(keys[key_at], stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            raise EOFError
        if first.pts is None:
            raise _NoTimestamps
        if first.pts <= target or key_at == 0:
            return _chain(first, frames)
        key_at -= 1


def _chain(first, rest):
    yield first
    yield from rest


def _read_sequentially(container, stream, num_frames: int) -> VideoClip:
    """Decode from the start (containers without timestamps), keeping only the sampled frames."""
    count = sum(1 for packet in container.demux(stream) if packet.size)
    if not count:
        raise VideoError("video has no frames")
    container.seek(0)
    indices = uniform_indices(count, num_frames)
    wanted = set(indices.tolist())
    output = _Output(indices)
    decoded = -1
    try:
        for decoded, frame in enumerate(container.decode(stream)):
            if decoded in wanted:
                output.put(decoded, frame)
            if decoded >= indices[-1]:
                break
    except EOFError:
        pass
    if output.array is None:
        raise VideoError("video has no frames")
    if decoded < indices[-1]:
        raise VideoError(f"only {decoded + 1} of {count} frames decode")
    return VideoClip(output.array, indices, count)
