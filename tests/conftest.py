"""Shared fixtures: a tiny randomly initialised LLaVA-OneVision built in code, and videos.

Tests run offline (HF_HUB_OFFLINE=1) on CPU; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from embedded.tiny import TinySpec, build_tiny_llava_onevision

TEST_SPEC = TinySpec(image_size=32, patch_size=8, vision_hidden=32, vision_heads=2, text_hidden=64, text_intermediate=128)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random tiny LLaVA-OV: 4x4 un-pooled grid, 2x2 pooled, 4-layer GQA Qwen2 decoder."""
    return str(build_tiny_llava_onevision(tmp_path_factory.mktemp("tiny_ov"), TEST_SPEC))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_checkpoint):
    from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter

    return LlavaOnevisionAdapter(tiny_checkpoint, device="cpu")


@pytest.fixture
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(4, 40, 40, 3), dtype=np.uint8)


def write_video(path, frames: np.ndarray, fps: int = 8) -> str:
    """Encode frames [T, H, W, 3] uint8 into an mp4 with PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture
def video_file(tmp_path, frames) -> str:
    return write_video(tmp_path / "clip.mp4", frames)


torch.set_num_threads(min(2, torch.get_num_threads()))
