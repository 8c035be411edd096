"""The seeking frame reader returns the frames a full decode would, at lmms-eval's indices."""

from __future__ import annotations

import av
import numpy as np
import pytest

from tokbench.harness import video
from tokbench.harness.video import read_clip


def encode(path, count: int, codec: str, options: dict, size: int = 64, fps: int = 25) -> str:
    """A clip whose frames all differ (a moving bar over noise), with keyframes every few frames."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(count):
            frame = base.copy()
            frame[(index * 3) % size] = 255
            frame[:, index % size] = 0
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decode_everything(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


CODECS = {
    "mpeg4_gop12": ("mpeg4", {"g": "12"}),
    "x264_bframes_gop16": ("libx264", {"g": "16", "bf": "2", "preset": "medium", "sc_threshold": "0"}),
}


@pytest.fixture(scope="module", params=sorted(CODECS))
def long_clip(request, tmp_path_factory):
    codec, options = CODECS[request.param]
    return encode(tmp_path_factory.mktemp("clips") / f"{request.param}.mp4", 150, codec, options)


@pytest.mark.parametrize("num_frames", [1, 7, 32, 150])
def test_seeking_reader_equals_full_decode(long_clip, num_frames):
    everything = decode_everything(long_clip)
    clip = read_clip(long_clip, num_frames)
    expected = np.linspace(0, len(everything) - 1, num_frames, dtype=int)
    assert clip.total_frames == len(everything) == 150
    assert np.array_equal(clip.indices, expected)
    assert np.array_equal(clip.frames, everything[expected])


def test_indices_are_lmms_evals_decord_reader(long_clip):
    """llava_hf / llava_onevision read with decord at np.linspace(0, len(vr) - 1, n, dtype=int)."""
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(long_clip, ctx=decord.cpu(0))
    theirs = np.linspace(0, len(reader) - 1, 9, dtype=int)
    clip = read_clip(long_clip, 9)
    assert len(reader) == clip.total_frames
    assert np.array_equal(clip.indices, theirs)
    # same frames up to colour-conversion rounding (decord converts with its own filter graph)
    diff = np.abs(reader.get_batch(theirs.tolist()).asnumpy().astype(int) - clip.frames.astype(int))
    assert diff.mean() < 2.0


def test_more_frames_than_the_video_has_repeat_as_the_reference_models_do(video_file):
    clip = read_clip(video_file, 8)  # a 4-frame clip
    assert clip.total_frames == 4
    assert clip.indices.tolist() == np.linspace(0, 3, 8, dtype=int).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    everything = decode_everything(video_file)
    assert np.array_equal(clip.frames, everything[clip.indices])


def test_sequential_fallback_without_timestamps(long_clip, monkeypatch):
    def no_timestamps(container, stream):
        raise video._NoTimestamps

    expected = read_clip(long_clip, 11)
    monkeypatch.setattr(video, "_packet_index", no_timestamps)
    fallback = read_clip(long_clip, 11)
    assert np.array_equal(fallback.indices, expected.indices)
    assert np.array_equal(fallback.frames, expected.frames)

