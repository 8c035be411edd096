"""Bad input gets a clear one-line error: videos, configs, budgets, unservable models."""

from __future__ import annotations

import pytest
import torch

from tokbench.harness.cli import main
from tokbench.harness.config import ConfigError, parse_config
from tokbench.harness.runner import Runner
from tokbench.harness.video import VideoError, read_clip
from tokbench.methods.base import MethodError, VideoTokens
from tokbench.methods.registry import build_reducer


def test_missing_video(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        read_clip(tmp_path / "nope.mp4", 4)


def test_corrupt_video(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    with pytest.raises(VideoError, match="cannot decode"):
        read_clip(path, 4)


def test_zero_frame_video(tmp_path):
    import av

    path = tmp_path / "empty.mkv"
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header; no frame follows
    assert path.exists()
    with pytest.raises(VideoError, match="no frames"):
        read_clip(path, 4)


def test_sampling_repeats_frames_of_a_short_video(video_file):
    assert read_clip(video_file, 8).frames.shape == (8, 40, 40, 3)


def test_failed_sample_is_an_error_not_an_empty_answer(tiny_adapter, tmp_path):
    record = Runner(tiny_adapter, build_reducer("full"), 4).answer(7, str(tmp_path / "missing.mp4"), "What?", 4)
    assert record.answer is None and record.error.startswith("VideoError: video file not found")


def test_token_budget_above_available_fails_the_sample(tiny_adapter, video_file):
    record = Runner(tiny_adapter, build_reducer("uniform_pool", {"tokens": "1000"}), 4).answer(0, video_file, "What?", 4)
    assert "exceeds" in record.error


def test_in_llm_layer_beyond_the_model(tiny_adapter):
    with pytest.raises(MethodError, match="beyond"):
        Runner(tiny_adapter, build_reducer("fastv", {"K": "9"}), 4)


def test_method_needing_what_the_model_lacks():
    tokens = VideoTokens(features=torch.zeros(2, 2, 2, 4))
    with pytest.raises(MethodError, match="vision-encoder attention"):
        tokens.encoder_attention()
    with pytest.raises(MethodError, match="un-pooled"):
        tokens.unpooled()


def test_config_typo_is_named(tmp_path):
    raw = {"name": "x", "models": [{"name": "m", "pretrained": "p"}], "tasks": ["t"], "methods": [{"method": "full"}], "limt": 3}
    with pytest.raises(ConfigError, match="unknown key 'limt' in the config"):
        parse_config(raw, tmp_path)
    raw.pop("limt")
    raw["methods"] = [{"method": "uniform_pool", "budgets": [{"retian": 0.5}]}]
    with pytest.raises(ConfigError, match="unknown key 'retian' in methods\\[0\\].budgets\\[0\\]"):
        parse_config(raw, tmp_path)


def test_method_restricted_to_an_unknown_model_is_named(tmp_path):
    models = [{"name": "base", "pretrained": "p"}, {"name": "tuned", "pretrained": "q"}]
    raw = {"name": "x", "models": models, "tasks": ["t"], "methods": [{"method": "vqtoken", "models": ["tunde"]}]}
    with pytest.raises(ConfigError, match="methods\\[0\\].models names 'tunde'"):
        parse_config(raw, tmp_path)
    raw["methods"][0]["models"] = ["tuned"]
    cells = parse_config(raw, tmp_path).cells()
    assert [(c.model.name, c.method) for c in cells] == [("base", "full"), ("tuned", "full"), ("tuned", "vqtoken")]


def test_cli_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", "--model", "llava-ov-7b", "--method", "uniform_pool", "--param", "tokens=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "tokbench: error: tokens=0 is below 1"
