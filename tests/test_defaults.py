"""Defaults that fit the model, budgets against the default tokens, and ``tokbench ask`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tokbench.harness.video as video_module
from tokbench.harness.cli import main
from tokbench.harness.runner import Runner, measure_prefill_flops
from tokbench.harness.video import read_clip
from tokbench.methods.base import MethodError, VideoTokens, keep_all
from tokbench.methods.holitom import HoliTom, paper_layer
from tokbench.methods.registry import available, build_reducer

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
BASE, VQ = CHECKPOINTS / "tiny-llava-ov-synthvqa", CHECKPOINTS / "tiny-llava-ov-synthvqa-vqtoken"
RUNS = [(name, {}) for name in sorted(available())] + [("vqtoken", {"mode": "attention"})]


# --- HoliTom's K from the LLM's depth --------------------------------------------------------


def test_holitom_k_follows_the_paper_for_each_depth():
    assert [paper_layer(n) for n in (2, 4, 24, 28, 80)] == [1, 3, 15, 18, 60]
    reducer = build_reducer("holitom")
    assert reducer.values["K"] == "auto"
    assert [reducer.in_llm_layer(n) for n in (4, 24, 28)] == [3, 15, 18]
    assert reducer.token_schedule(6272, 28)[0][0] == 18
    with pytest.raises(MethodError, match="beyond the LLM's 4 layers"):
        build_reducer("holitom", {"K": "18"}).in_llm_layer(4)  # an explicit impossible K is still an error
    with pytest.raises(MethodError, match="at least 2 layers"):
        HoliTom().in_llm_layer(1)


# --- uniform_pool: the budget counts against the default visual tokens -------------------------


def grids(frames=4, side=27, dim=8):
    generator = torch.Generator().manual_seed(0)
    unpooled = torch.randn(frames, side, side, dim, generator=generator)

    def pool(grid):
        x = torch.nn.functional.interpolate(grid.permute(0, 3, 1, 2), size=[(side + 1) // 2] * 2, mode="bilinear")
        return x.permute(0, 2, 3, 1)

    return VideoTokens(pool(unpooled), newline=torch.zeros(dim), unpooled_fn=lambda: unpooled, pool_fn=pool)


@pytest.mark.parametrize("source", ["pooled", "unpooled"])
def test_uniform_pool_budget_counts_against_default_tokens(source):
    video = grids()
    assert video.default_token_count == 785
    kept = build_reducer("uniform_pool", {"retain": "0.25", "source": source}).reduce_visual(video)
    assert kept.count == 196 + 1  # 0.25 of the 784 grid tokens, plus the newline
    tokens = build_reducer("uniform_pool", {"tokens": "100", "source": source}).reduce_visual(video)
    assert tokens.count <= 101


def test_uniform_pool_bilinear_on_the_unpooled_grid_is_the_models_own_pooling():
    video = grids()
    ours = build_reducer("uniform_pool", {"mode": "bilinear", "source": "unpooled"}).reduce_visual(video)
    torch.testing.assert_close(ours.embeddings, keep_all(video).embeddings)


# --- tokbench ask ------------------------------------------------------------------------------


def ask(capsys, *args: str) -> dict:
    assert main(["ask", "--question", "What is shown?", "--frames", "4", "--max-new-tokens", "2", "--device", "cpu", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_ask_decodes_the_video_once_and_takes_a_dtype(tiny_checkpoint, video_file, capsys, monkeypatch):
    reads = []
    original = video_module._read_by_seeking
    monkeypatch.setattr(video_module, "_read_by_seeking", lambda *a: reads.append(1) or original(*a))
    out = ask(capsys, "--model", tiny_checkpoint, "--video", video_file, "--dtype", "bfloat16")
    assert len(reads) == 1
    assert out["dtype"] == "bfloat16" and out["error"] is None and out["tflops_measured"] > 0
    assert out["video_frames"] == 4


def test_ask_token_dynamics_with_random_weights_traces(tiny_checkpoint, video_file, capsys):
    out = ask(capsys, "--model", tiny_checkpoint, "--video", video_file, "--method", "token_dynamics", "--param", "allow_random_weights=true")
    assert out["method_info"]["random_weights"] is True and out["tflops_measured"] > 0


@pytest.fixture(scope="module")
def shipped_adapters():
    from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter

    return {path.name: LlavaOnevisionAdapter(str(path), device="cpu") for path in (BASE, VQ)}


@pytest.fixture(scope="module")
def shipped_clip(tmp_path_factory):
    import numpy as np

    from tests.conftest import write_video

    rng = np.random.default_rng(3)
    path = write_video(tmp_path_factory.mktemp("shipped") / "clip.mp4", rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
    return read_clip(path, 8)


@pytest.mark.parametrize("checkpoint", [BASE.name, VQ.name])
@pytest.mark.parametrize(("method", "params"), RUNS, ids=[f"{m}{'-' + p['mode'] if p else ''}" for m, p in RUNS])
def test_every_method_answers_on_the_shipped_checkpoints_with_no_parameters(shipped_adapters, shipped_clip, checkpoint, method, params):
    adapter = shipped_adapters[checkpoint]
    reducer = build_reducer(method, params)
    if checkpoint == BASE.name and reducer.values.get("mode") == "attention":
        with pytest.raises(MethodError, match="needs trained VQ-Attention weights"):
            Runner(adapter, reducer, 8)  # refused when the runner is built: before any model work
        return
    runner = Runner(adapter, reducer, 8)
    record = runner.answer(0, shipped_clip, "What is shown?", 2)
    assert record.error is None and isinstance(record.answer, str), record.error
    if method == "holitom":
        assert record.method_info["K"] == 3  # round(18/28 of 4 layers)
    if reducer.values.get("mode") == "attention":
        assert record.method_info["rescale"] is True and record.method_info["random_weights"] is False


def test_shipped_vq_checkpoint_token_dynamics_through_the_cli(video_file, capsys):
    out = ask(capsys, "--model", str(VQ), "--video", video_file, "--method", "token_dynamics")
    assert out["error"] is None and out["method_info"]["rescale"] is True and out["tflops_measured"] > 0


def test_learned_module_on_the_base_checkpoint_is_a_one_line_refusal(video_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--model", str(BASE), "--video", video_file, "--question", "q", "--method", "token_dynamics", "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("tokbench: error: ") and err.count("\n") == 1  # before the model loads
    assert "needs trained VQ-Attention weights" in err


def test_measured_flops_reuse_the_runners_pipeline(tiny_adapter, video_file, monkeypatch):
    calls = []
    runner = Runner(tiny_adapter, build_reducer("full"), 4)
    original = Runner.prepare
    monkeypatch.setattr(Runner, "prepare", lambda self, *a: calls.append(1) or original(self, *a))
    assert measure_prefill_flops(runner, read_clip(video_file, 4), "What?") > 0
    assert calls == [1]
