"""``tokbench ask``: one video, one question, the answer and the sample's accounting."""

from __future__ import annotations

import json

import pytest

from tokbench.harness.cli import main


def test_ask_prints_answer_and_accounting(tiny_checkpoint, video_file, capsys):
    args = ["ask", "--model", tiny_checkpoint, "--video", video_file, "--question", "What is shown?",
            "--method", "uniform_pool", "--param", "tokens=4", "--frames", "4", "--max-new-tokens", "3", "--device", "cpu", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and isinstance(out["answer"], str)
    assert out["visual_tokens"] == 5 and out["layer_counts"] == [5, 5, 5, 5]
    assert out["tflops_measured"] > 0 and out["params"]["tokens"] == 4


def test_ask_with_a_missing_video_is_a_one_line_error(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--model", tiny_checkpoint, "--video", str(tmp_path / "x.mp4"), "--question", "q", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("tokbench: error: video file not found")
