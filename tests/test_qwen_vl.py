"""Qwen2.5-VL through the seam: a tiny random-weight checkpoint built offline, checked against
Hugging Face's own ``generate``/forward (tokens, logits, M-RoPE positions, eager attention
weights), the processor's token counts, and every method through ``tokbench ask``, the
lmms-eval plugin and a sweep over both families."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tokbench.harness import engine
from tokbench.harness.cli import main
from tokbench.harness.config import parse_config
from tokbench.harness.models import load_adapter
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.harness.models.qwen2_5_vl import Qwen2_5_VLAdapter
from embedded.tiny_qwen import build_tiny_qwen2_5_vl
from tokbench.harness.sweep import run_sweep
from tokbench.methods.base import MethodError, ReducedTokens
from tokbench.methods.registry import available, build_reducer

# one budgeted setting per method that the tiny model can serve (3 frame pairs of 3x3 tokens)
METHOD_PARAMS = {
    "full": {},
    "uniform_pool": {"retain": 0.5},
    "fastv": {"K": 2, "retain": 0.5},
    "divprune": {"retain": 0.5},
    "holitom": {"retain": 0.5, "K": 2},
    "vqtoken": {"k": 4},
    "token_dynamics": {"k": 4, "mode": "centroids"},
}


@pytest.fixture(scope="session")
def qwen_checkpoint(tmp_path_factory) -> str:
    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen")))


@pytest.fixture(scope="module")
def qwen(qwen_checkpoint) -> Qwen2_5_VLAdapter:
    return load_adapter(qwen_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def qwen_eager(qwen_checkpoint) -> Qwen2_5_VLAdapter:
    return load_adapter(qwen_checkpoint, device="cpu", attn_implementation="eager")


@pytest.fixture
def odd_frames() -> np.ndarray:
    """Five frames: the processor pads to a multiple of the temporal patch size (3 frame pairs)."""
    return np.random.default_rng(1).integers(0, 255, size=(5, 40, 40, 3), dtype=np.uint8)


def prepared(adapter, frames, method="full", policy=None, question="What is shown in the video?"):
    reducer = build_reducer(method, METHOD_PARAMS.get(method, {}))
    prompt = adapter.build_prompt(question)
    video = adapter.encode_video(adapter.pixel_values(frames))
    reduced = reducer.reduce_visual(video)
    return reducer, prompt, video, reduced, adapter.prepare_prompt(prompt, reduced, video, policy or reducer.position_policy_used)


def test_load_adapter_chooses_the_family_from_the_config(qwen, tiny_checkpoint, tmp_path):
    assert isinstance(qwen, Qwen2_5_VLAdapter)
    assert isinstance(load_adapter(tiny_checkpoint, device="cpu"), LlavaOnevisionAdapter)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="no tokbench adapter for model_type 'bert'"):
        load_adapter(str(tmp_path))
    with pytest.raises(ValueError, match="cannot load model"):
        load_adapter(str(tmp_path / "missing"))


@torch.inference_mode()
def test_full_matches_generate_tokens_logits_and_positions(qwen, odd_frames):
    reducer, prompt, video, reduced, prep = prepared(qwen, odd_frames)
    inputs = qwen.processor(text=[prompt], videos=[odd_frames], return_tensors="pt")
    # visual token count and prompt length equal the processor's
    assert reduced.count == video.grid_token_count == int((inputs["input_ids"] == qwen.video_token_id).sum()) == 27
    assert prep.prompt_tokens == inputs["input_ids"].shape[1]
    # 3-D positions equal the model's get_rope_index on the processor's ids
    hf_positions, _ = qwen.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
    )
    assert torch.equal(prep.position_ids, hf_positions)
    stack = qwen.decoder()
    generation = engine.generate(stack, prep.embeds, prep.position_ids, prep.visual_span, reducer, 8, set())
    hf = qwen.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    assert generation.token_ids == hf.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    assert torch.allclose(generation.prefill.logits, hf.logits[0][0], atol=1e-4)
    # decoding continues at max position + 1: the prompt plus one generated token, run through the
    # engine at next_position, gives Hugging Face's logits for that sequence (rope delta included)
    token = generation.token_ids[0]
    embeds = torch.cat([prep.embeds, stack.embed_tokens(torch.tensor([[token]]))], dim=1)
    nxt = torch.full((3, 1, 1), generation.prefill.next_position)
    extended = engine.prefill(stack, embeds, torch.cat([prep.position_ids, nxt], dim=-1), prep.visual_span)
    ids = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)
    hf_logits = qwen.model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                              "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.int)], 1)}).logits
    assert torch.allclose(extended.logits, hf_logits[0, -1], atol=1e-4)


@torch.inference_mode()
def test_keep_all_in_llm_plan_equals_full(qwen, odd_frames):
    _, _, _, _, prep = prepared(qwen, odd_frames)
    stack = qwen.decoder()
    full = engine.prefill(stack, prep.embeds, prep.position_ids, prep.visual_span)
    keep_all = build_reducer("fastv", {"K": 2, "retain": 1.0})
    planned = engine.prefill(stack, prep.embeds, prep.position_ids, prep.visual_span, keep_all)
    assert planned.layer_visual_counts == full.layer_visual_counts == [27] * 4
    assert torch.allclose(planned.logits, full.logits, atol=1e-5)


@torch.inference_mode()
def test_last_query_score_is_the_eager_kernels_attention(qwen_eager, odd_frames):
    _, prompt, _, _, prep = prepared(qwen_eager, odd_frames)
    inputs = qwen_eager.processor(text=[prompt], videos=[odd_frames], return_tensors="pt")
    out = qwen_eager.model(**inputs, output_attentions=True, output_hidden_states=True)
    stack = qwen_eager.decoder()
    layer = 1
    cos, sin = stack.rotary(prep.embeds, prep.position_ids)  # the model's multimodal rotary
    score = engine.last_query_attention(stack.layers[layer], out.hidden_states[layer], cos, sin)
    assert torch.allclose(score, out.attentions[layer][0, :, -1].float(), atol=1e-5)
    # with 1-D positions the score differs: the multimodal rotary matters
    flat = torch.arange(prep.embeds.shape[1])[None]
    cos1, sin1 = stack.rotary(prep.embeds, flat)
    assert not torch.allclose(engine.last_query_attention(stack.layers[layer], out.hidden_states[layer], cos1, sin1), score, atol=1e-4)


@torch.inference_mode()
def test_video_tokens_grids_and_encoder_attention(qwen, odd_frames):
    video = qwen.encode_video(qwen.pixel_values(odd_frames))
    assert tuple(video.features.shape) == (3, 3, 3, 64) and video.newline is None
    assert tuple(video.unpooled().shape) == (3, 6, 6, 64)
    patches = video.encoder_attention(pooled=False)
    assert tuple(patches.shape) == (3, 6, 6)
    assert torch.allclose(patches.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)  # full attention within each frame pair
    pooled = video.encoder_attention(pooled=True)
    assert torch.allclose(pooled, patches.view(3, 3, 2, 3, 2).mean(dim=(2, 4)))


@torch.inference_mode()
def test_original_and_compact_positions(qwen, odd_frames):
    prompt = qwen.build_prompt("Which colour?")
    video = qwen.encode_video(qwen.pixel_values(odd_frames))
    ids = qwen.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    start = int((ids == qwen.video_token_id).nonzero()[0])
    full = qwen.rope_index(ids, start, (3, 3, 3))
    # keep the corner cells of every frame pair (rows and columns 0 and 2)
    sources = torch.tensor([t * 9 + h * 3 + w for t in range(3) for h in (0, 2) for w in (0, 2)])
    reduced = ReducedTokens(video.flat()[sources], sources)
    original = qwen.prepare_prompt(prompt, reduced, video, "original").position_ids[:, 0]
    assert torch.equal(original[:, start : start + 12], full[:, start + sources])
    assert torch.equal(original[:, start + 12 :], full[:, start + 27 :])  # text keeps its rope delta
    compact = qwen.prepare_prompt(prompt, reduced, video, "compact").position_ids[:, 0]
    small = qwen.rope_index(ids, start, (3, 2, 2))  # the model's positions for a 3x2x2 video
    assert torch.equal(compact, small)
    assert int(compact[:, start + 12 :].min()) < int(original[:, start + 12 :].min())
    codebook = ReducedTokens(video.flat()[:4], torch.full((4,), -1))
    as_text = qwen.prepare_prompt(prompt, codebook, video, "compact").position_ids[:, 0]
    assert torch.equal(as_text, torch.arange(len(ids) + 3).expand(3, -1))
    with pytest.raises(MethodError, match="original"):
        qwen.prepare_prompt(prompt, codebook, video, "original")


def test_method_table_covers_every_registered_method():
    assert set(METHOD_PARAMS) == set(available())


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_every_method_through_tokbench_ask(method, qwen_checkpoint, video_file, capsys):
    args = ["ask", "--model", qwen_checkpoint, "--video", video_file, "--question", "What is shown?", "--method", method,
            "--frames", "4", "--max-new-tokens", "2", "--device", "cpu", "--json"]
    args += [item for key, value in METHOD_PARAMS[method].items() for item in ("--param", f"{key}={value}")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and isinstance(out["answer"], str) and out["tflops_measured"] > 0
    assert 1 <= out["visual_tokens"] <= 18 and len(out["layer_counts"]) == 4  # 2 frame pairs of 3x3


def test_sweep_over_both_families_writes_one_leaderboard(tiny_checkpoint, qwen_checkpoint, tmp_path):
    # every method on Qwen2.5-VL (through the lmms-eval plugin), full and FastV on LLaVA-OV
    methods = [{"method": m, **({"params": p} if p else {}), **({} if m == "fastv" else {"models": ["tiny-qwen"]})}
               for m, p in METHOD_PARAMS.items()]
    raw = {
        "name": "two_families", "output_dir": str(tmp_path), "tasks": ["synthvqa"], "frames": 4, "limit": 1,
        "max_new_tokens": 2, "seed": 0, "methods": methods,
        "models": [{"name": "tiny-ov", "pretrained": tiny_checkpoint}, {"name": "tiny-qwen", "pretrained": qwen_checkpoint}],
    }
    config = parse_config(raw, tmp_path)
    rows = run_sweep(config, progress=False)
    assert len(rows) == len(METHOD_PARAMS) + 2
    table = pd.read_csv(config.results_dir / "leaderboard.csv")
    qwen_rows = table[table["model"] == "tiny-qwen"]
    assert sorted(table[table["model"] == "tiny-ov"]["method"]) == ["fastv", "full"]
    assert (table["status"] == "ok").all(), table[["model", "method", "first_error"]]
    assert set(qwen_rows["method"]) == set(METHOD_PARAMS) and (qwen_rows["errors"] == 0).all()
    assert (qwen_rows["tflops_measured"] > 0).all() and (qwen_rows["visual_tokens"] > 0).all()
    full = qwen_rows[qwen_rows["method"] == "full"].iloc[0]
    assert full["visual_tokens"] == 18  # 4 frames -> 2 frame pairs of 3x3 merged tokens
    for method in ("uniform_pool", "fastv", "divprune", "holitom", "vqtoken"):  # fvcore sees the reduction
        assert qwen_rows[qwen_rows["method"] == method].iloc[0]["tflops_measured"] < full["tflops_measured"], method


def flops_json(args, capsys) -> dict:
    assert main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_knows_qwen_geometry(qwen_checkpoint, capsys):
    # 448x448 -> 16x16 patches of 28 px per frame pair; 32 frames -> 16 pairs
    assert flops_json(["--model", "qwen2.5-vl-7b", "--frames", "32", "--method", "full"], capsys)["visual_tokens_full"] == 16 * 256
    # 360x640 is resized to 364x644 (multiples of 28): 13 x 23 tokens per pair
    wide = flops_json(["--model", "qwen2.5-vl-7b", "--frames", "32", "--method", "full", "--resolution", "360x640"], capsys)
    assert wide["visual_tokens_full"] == 16 * 13 * 23
    for name, layers in (("qwen2.5-vl-3b", 36), ("qwen2.5-vl-72b", 80)):
        result = flops_json(["--model", name, "--frames", "8", "--method", "fastv", "--param", "K=2", "--param", "retain=0.5"], capsys)
        assert result["schedule"] == [{"layers": 2, "tokens": 1024}, {"layers": layers - 2, "tokens": 512}]
    # the checkpoint folder: its own processor limits; 5 frames of 40x40 -> 3 pairs of 3x3, as the adapter feeds
    tiny = flops_json(["--model", qwen_checkpoint, "--frames", "5", "--method", "full", "--resolution", "40x40"], capsys)
    assert tiny["visual_tokens_full"] == 27


def test_lmms_eval_plugin_picks_qwen_from_pretrained_alone(qwen_checkpoint):
    from lmms_eval.evaluator import simple_evaluate

    from tokbench.harness.lmms_plugin import TokbenchLMM
    from tokbench.harness.sweep import task_manager

    lm = TokbenchLMM(pretrained=qwen_checkpoint, method="holitom", max_frames_num=4, device="cpu", max_new_tokens=2, retain=0.5, K=2)
    assert isinstance(lm.adapter, Qwen2_5_VLAdapter)
    tasks_dir = str(Path(__file__).resolve().parents[1] / "tasks")
    results = simple_evaluate(model=lm, tasks=["synthvqa"], limit=1, task_manager=task_manager([tasks_dir]),
                              bootstrap_iters=0, verbosity="WARNING")
    assert "synthvqa" in results["results"]
    (record,) = lm.records.values()
    assert record.error is None and record.visual_tokens < 18 and record.layer_counts[-1] < record.layer_counts[0]
