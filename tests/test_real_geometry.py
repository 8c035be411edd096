"""The real geometries: random-weight models with the exact configurations of LLaVA-OV-0.5B,
LLaVA-OV-7B and LLaVA-Video-7B (depth cut; ``embedded/reference_configs.py``), checked
against code we did not write: Hugging Face ``generate`` and processor, a transcription of
LLaVA-NeXT's ``get_2dPool`` / ``add_token_per_grid`` for llava_vid, and lmms-eval's own
``llava_vid.load_video``.

Cost on two CPU cores: each model is built once per module (LLaVA-OV-7B reuses LLaVA-Video-7B's
random weights through hard links). The 0.5B model runs 8 frames (the issue's 1569 tokens); the
7B-width models 1-2 frames with the vocabulary cut to 512 rows (the only value changed besides
depth; 152128 x 3584 rows would be 2 x 2.2 GB in fp32). Every method runs on the 0.5B geometry
at 3 frames and on the llava_vid grid layout (tiny model); every method at 32 frames and real
widths is ``scripts/gpu_check.sh`` (about 70 s per method on this session's shared CPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokbench.harness import engine
from tokbench.harness.flops import BUILTIN_MODELS, dims_from_config, paper_flops
from tokbench.harness.models.geometry import detect_geometry, llava_vid_frame_plan, time_instruction
from tokbench.harness.models.llava_onevision import LlavaVideoAdapter, open_llava_adapter
from embedded.reference_configs import _hub_layout_templates, build_reference_checkpoint, resave
from tokbench.methods.base import keep_all
from tokbench.methods.registry import available, build_reducer
from tests.conftest import write_video

SMALL_VOCAB = 512
QUESTION = "What happens in the video?"

# Parameters for a 2-layer LLM (in-LLM methods act at K=1); learned-module methods on random weights.
METHOD_PARAMS = {
    "fastv": {"K": "1"},
    "holitom": {"K": "1"},
    "token_dynamics": {"allow_random_weights": "true"},
}


def _frames(count: int, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ov05(tmp_path_factory):
    path = build_reference_checkpoint("llava-ov-0.5b", tmp_path_factory.mktemp("ov05"), vision_layers=1, text_layers=2)
    return open_llava_adapter(str(path), device="cpu")


@pytest.fixture(scope="module")
def video7b_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref7b")
    return build_reference_checkpoint("llava-video-7b", root / "llava-video-7b-depthcut", vision_layers=1, text_layers=1, vocab_size=SMALL_VOCAB)


@pytest.fixture(scope="module")
def ov7b_dir(video7b_dir):
    """LLaVA-OV-7B: the same architecture and values; the same random weights (hard links), no llava_vid keys."""
    out = video7b_dir.parent / "llava-ov-7b-depthcut"
    out.mkdir()
    for item in video7b_dir.iterdir():
        os.link(item, out / item.name)
    config = json.loads((video7b_dir / "config.json").read_text())
    del config["mm_newline_position"], config["mm_spatial_pool_mode"]
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps(config))
    return out


def _hf_generate_matches_engine(adapter, frames, new_tokens=3):
    prompt = adapter.build_prompt(QUESTION)
    video = adapter.encode_video(adapter.pixel_values(frames))
    prepared = adapter.prepare_prompt(prompt, keep_all(video), video, "compact")
    ours = engine.generate(adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, None, new_tokens, set())
    inputs = adapter.processor(videos=[frames], text=prompt, return_tensors="pt")
    reference = _greedy(adapter.model, new_tokens, **inputs)
    video_tokens = int((inputs["input_ids"] == adapter.video_token_id).sum())
    assert video.default_token_count == video_tokens
    assert prepared.embeds.shape[1] == inputs["input_ids"].shape[1]
    assert torch.allclose(ours.prefill.logits, reference.logits[0][0], atol=1e-4, rtol=1e-4)
    assert ours.token_ids == reference.sequences[0, -new_tokens:].tolist()
    return video_tokens


def _greedy(model, new_tokens, **inputs):
    """HF greedy ``generate`` with the first step's raw logits."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              output_logits=True, return_dict_in_generate=True)


def test_ov05_full_equals_hf_generate_at_8_frames(ov05):
    assert ov05.config.text_config.hidden_size == 896 and ov05.config.text_config.num_key_value_heads == 2
    assert ov05.config.vision_config.image_size // ov05.config.vision_config.patch_size == 27
    assert ov05.video_token_id == 151647 and ov05.config.text_config.vocab_size == 152000
    assert _hf_generate_matches_engine(ov05, _frames(8)) == 1569  # 8 x 14 x 14 + 1, the processor's count


def test_ov7b_full_equals_hf_generate(ov7b_dir):
    adapter = open_llava_adapter(str(ov7b_dir), device="cpu")
    assert type(adapter).__name__ == "LlavaOnevisionAdapter"
    assert adapter.config.text_config.hidden_size == 3584 and adapter.config.text_config.intermediate_size == 18944
    assert _hf_generate_matches_engine(adapter, _frames(1)) == 196 + 1


def llava_next_video_embeds(model, pixels: torch.Tensor) -> torch.Tensor:
    """LLaVA-NeXT ``llava_arch.py`` for a video with mm_spatial_pool_mode=average, stride 2,
    mm_newline_position=grid: ``encode_images``, ``get_2dPool``, ``add_token_per_grid``
    (transcribed op for op on the HF module names)."""
    selected = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    features = model.model.multi_modal_projector(selected)
    frames, count, dim = features.shape
    side = math.isqrt(count)
    x = features.view(frames, side, side, -1).permute(0, 3, 1, 2).contiguous()
    x = F.avg_pool2d(x, 2).permute(0, 2, 3, 1).reshape(frames, -1, dim)
    h = int(math.sqrt(x.shape[1]))
    x = x.view(frames, 1, h, h, -1).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
    x = torch.cat((x, model.model.image_newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
    return x.flatten(1, 2).transpose(0, 1)


def test_llava_video_geometry_equals_llava_next_and_hf_generate(video7b_dir):
    adapter = open_llava_adapter(str(video7b_dir), device="cpu")
    assert isinstance(adapter, LlavaVideoAdapter) and adapter.describe()["geometry"] == "llava_vid"
    frames = _frames(2)
    prompt = adapter.build_prompt(QUESTION)
    pixels = adapter.pixel_values(frames)
    video = adapter.encode_video(pixels)
    assert video.grid == (13, 13) and video.default_token_count == 2 * (169 + 13)
    prepared = adapter.prepare_prompt(prompt, keep_all(video), video, "compact")
    ids = adapter.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    where = int((ids == adapter.video_token_id).nonzero())
    embed = adapter.model.get_input_embeddings()
    with torch.no_grad():
        visual = llava_next_video_embeds(adapter.model, pixels)
        reference_embeds = torch.cat([embed(ids[:where]), visual, embed(ids[where + 1 :])])[None]
    assert torch.allclose(prepared.embeds, reference_embeds, atol=1e-5)
    mask = torch.ones(reference_embeds.shape[:2], dtype=torch.long)
    reference = _greedy(adapter.model, 3, inputs_embeds=reference_embeds, attention_mask=mask)
    ours = engine.generate(adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, None, 3, set())
    assert torch.allclose(ours.prefill.logits, reference.logits[0][0], atol=1e-4, rtol=1e-4)
    assert ours.token_ids == reference.sequences[0, -3:].tolist()
    # the default layout under position policy "original" is the plain sequence
    original = adapter.prepare_prompt(prompt, keep_all(video), video, "original")
    assert torch.equal(original.position_ids, prepared.position_ids)


def test_flops_counts_the_llava_vid_geometry(video7b_dir):
    """``tokbench flops --model llava-video-7b``: 169 grid tokens + 13 newlines per frame, as the adapter feeds."""
    builtin = BUILTIN_MODELS["llava-video-7b"]
    from_config = dims_from_config(video7b_dir)
    assert (from_config.tokens_per_frame, from_config.newlines_per_frame, from_config.geometry) == (169, 13, "llava_vid")
    assert (builtin.tokens_per_frame, builtin.newlines_per_frame, builtin.newlines_per_video) == (169, 13, 0)
    full = paper_flops(build_reducer("full"), builtin, 32)
    assert (full["visual_tokens_full"], full["newline_tokens"], full["visual_tokens_fed"]) == (5408, 416, 5824)
    n, d, m = 5408, 3584, 18944
    assert full["paper_flops"] == 28 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert round(full["paper_tflops"], 1) == 34.2 and round(full["paper_tflops_full_fed"], 1) == 37.3
    ov = paper_flops(build_reducer("full"), BUILTIN_MODELS["llava-ov-7b"], 32)
    assert (ov["visual_tokens_full"], ov["visual_tokens_fed"]) == (6272, 6273)


def test_geometry_detection_rules(ov7b_dir, video7b_dir):
    assert detect_geometry({}, "llava-hf/LLaVA-Video-7B-Qwen2-hf").name == "llava_vid"
    assert detect_geometry({}, "llava-hf/llava-onevision-qwen2-7b-ov-hf").name == "llava_onevision"
    assert detect_geometry({"mm_newline_position": "grid"}, "some/folder").name == "llava_vid"
    assert detect_geometry({}, "LLaVA-Video-7B", explicit="llava_onevision").name == "llava_onevision"
    ov_config = json.loads((ov7b_dir / "config.json").read_text())
    assert detect_geometry(ov_config, "any/other-name").name == "llava_onevision"
    assert detect_geometry(json.loads((video7b_dir / "config.json").read_text()), "any/other-name").name == "llava_vid"
    with pytest.raises(ValueError, match="only for the llava_vid geometry"):
        open_llava_adapter(str(ov7b_dir), device="cpu", add_time_instruction=True)


def _reduce_and_prefill(adapter, video, name):
    reducer = build_reducer(name, METHOD_PARAMS.get(name, {}))
    reduced = reducer.reduce_visual(video)
    prepared = adapter.prepare_prompt(adapter.build_prompt(QUESTION), reduced, video, reducer.position_policy_used)
    result = engine.generate(adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, reducer, 1, set())
    assert torch.isfinite(result.prefill.logits).all()
    return reduced


@torch.inference_mode()
def test_every_method_runs_on_the_ov05_geometry(ov05):
    video = ov05.encode_video(ov05.pixel_values(_frames(3)))
    for name in available():
        reduced = _reduce_and_prefill(ov05, video, name)
        assert 1 <= reduced.count <= video.default_token_count, name


@pytest.fixture(scope="module")
def tiny_video_adapter(tiny_checkpoint):
    """The tiny model run with the llava_vid geometry (4x4 grid -> 2x2 average pooled, row newlines)."""
    return open_llava_adapter(tiny_checkpoint, geometry="llava_vid", device="cpu")


@torch.inference_mode()
def test_every_method_keeps_row_newlines_on_the_grid_layout(tiny_video_adapter):
    video = tiny_video_adapter.encode_video(tiny_video_adapter.pixel_values(_frames(6, size=40)))
    assert video.newline_layout == "grid" and video.grid == (2, 2)
    newline = video.newline.to(video.features.dtype)
    for name in available():
        reduced = _reduce_and_prefill(tiny_video_adapter, video, name)
        is_newline = (reduced.embeddings == newline).all(dim=1)
        sources = reduced.source_positions
        grid_sources = sources[~is_newline]
        if name == "full":
            assert reduced.count == 6 * 2 * 3 and int(is_newline.sum()) == 12
        if bool((grid_sources >= 0).all()) and name != "holitom":
            rows = grid_sources // video.grid[1]
            assert int(is_newline.sum()) == int((rows[1:] != rows[:-1]).sum()) + 1, name  # one per run of a row
            assert bool(is_newline[-1]), name
        assert int(is_newline.sum()) >= 1, name


def test_llava_vid_frame_plan_matches_lmms_eval_load_video(tmp_path):
    """Our plan against lmms-eval's installed ``LlavaVid.load_video`` (decord), run unchanged."""
    llava_vid = _import_lmms_eval_llava_vid()
    path = write_video(tmp_path / "clip.mp4", _frames(40, size=32), fps=8)
    from decord import VideoReader, cpu

    reader = VideoReader(path, ctx=cpu(0), num_threads=1)
    for max_frames, force in ((16, False), (3, False), (6, True)):
        frames, frame_time, video_time = llava_vid.LlavaVid.load_video(None, path, max_frames, 1, force_sample=force)
        plan = llava_vid_frame_plan(len(reader), reader.get_avg_fps(), max_frames, 1, force)
        assert plan.frame_time == frame_time and plan.video_time == pytest.approx(video_time)
        assert np.array_equal(reader.get_batch(plan.indices).asnumpy(), frames)
    plan = llava_vid_frame_plan(40, 8.0, 16)
    assert plan.indices == [0, 8, 16, 24, 32]
    assert time_instruction(plan).startswith("The video lasts for 5.00 seconds, and 5 frames are uniformly sampled from it.")


def _import_lmms_eval_llava_vid():
    """lmms-eval's llava_vid module imports LLaVA-NeXT (not installed): stub those imports only."""
    from transformers import PretrainedConfig

    names = ["llava", "llava.constants", "llava.conversation", "llava.mm_utils", "llava.model", "llava.model.builder",
             "llava.model.language_model", "llava.model.language_model.llava_llama", "llava.model.language_model.llava_qwen"]
    stubs = {name: types.ModuleType(name) for name in names}
    for attr in ("DEFAULT_IM_END_TOKEN", "DEFAULT_IM_START_TOKEN", "DEFAULT_IMAGE_TOKEN", "IMAGE_TOKEN_INDEX"):
        setattr(stubs["llava.constants"], attr, None)
    stubs["llava.conversation"].SeparatorStyle = stubs["llava.conversation"].conv_templates = None
    for attr in ("KeywordsStoppingCriteria", "get_model_name_from_path", "tokenizer_image_token"):
        setattr(stubs["llava.mm_utils"], attr, None)
    stubs["llava.model.builder"].load_pretrained_model = None
    stubs["llava.model.language_model.llava_llama"].LlavaConfig = type("LlavaConfig", (PretrainedConfig,), {"model_type": "llava_llama"})
    stubs["llava.model.language_model.llava_qwen"].LlavaQwenConfig = type("LlavaQwenConfig", (PretrainedConfig,), {"model_type": "llava_qwen"})
    module = "lmms_eval.models.simple.llava_vid"
    if module in sys.modules:
        return sys.modules[module]
    with mock.patch.dict(sys.modules, stubs):
        import importlib

        loaded = importlib.import_module(module)
    sys.modules[module] = loaded
    return loaded


def test_resaved_folder_keeps_video_and_question_in_the_prompt(tiny_checkpoint, tmp_path):
    """transformers 5 re-saves the processor's template as chat_template.jinja, which the tokenizer loads."""
    hub = tmp_path / "hub"
    shutil.copytree(tiny_checkpoint, hub)
    text_template = json.loads((hub / "tokenizer_config.json").read_text()).get("chat_template") or (hub / "chat_template.jinja").read_text()
    _hub_layout_templates(hub, text_template)
    resaved = resave(hub, tmp_path / "resaved")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(resaved).chat_template
    assert "'type'" in loaded  # the processor's multimodal template now sits in the tokenizer
    naive = AutoTokenizer.from_pretrained(resaved).apply_chat_template([{"role": "user", "content": f"<video>\n{QUESTION}"}], tokenize=False, add_generation_prompt=True)
    assert "<video>" not in naive  # the failure the adapter must avoid
    original = open_llava_adapter(str(hub), device="cpu").build_prompt(QUESTION)
    prompt = open_llava_adapter(str(resaved), device="cpu").build_prompt(QUESTION)
    assert prompt == original and prompt.count("<video>") == 1 and QUESTION in prompt


def test_llava_vid_sample_runs_end_to_end_with_its_frame_plan_and_time_instruction(tiny_checkpoint, tmp_path):
    from tokbench.harness.runner import Runner

    adapter = open_llava_adapter(tiny_checkpoint, geometry="llava_vid", add_time_instruction=True, device="cpu")
    path = write_video(tmp_path / "clip.mp4", _frames(24, size=40), fps=8)  # 3 s at 8 fps: llava_vid takes 1 frame per second
    clip = adapter.read_video(path, 16)
    plan = clip.plan
    assert plan.indices == [0, 8, 16] and len(clip.frames) == 3 and clip.total_frames == 24
    prompt = adapter.build_prompt(QUESTION, plan)
    assert time_instruction(plan) in prompt and prompt.count("<video>") == 1
    record = Runner(adapter, build_reducer("full"), 16).answer(0, path, QUESTION, 2)
    assert record.error is None and record.visual_tokens == 3 * 2 * (2 + 1)
    assert adapter.describe()["add_time_instruction"] is True


@torch.inference_mode()
def test_original_positions_follow_the_grid_layout(tiny_video_adapter):
    """Kept tokens and their row newlines keep the positions they have in the full grid layout."""
    video = tiny_video_adapter.encode_video(tiny_video_adapter.pixel_values(_frames(6, size=40)))
    reducer = build_reducer("divprune", {"tokens": "3", "positions": "original"})
    reduced = reducer.reduce_visual(video)
    prompt = tiny_video_adapter.build_prompt(QUESTION)
    prepared = tiny_video_adapter.prepare_prompt(prompt, reduced, video, "original")
    full = tiny_video_adapter.prepare_prompt(prompt, keep_all(video), video, "compact")
    start, end = prepared.visual_span
    full_start = full.visual_span[0]
    fed = {}  # source index -> position in the full layout
    for offset, source in enumerate(keep_all(video).source_positions.tolist()):
        fed[source] = int(full.position_ids[0, full_start + offset])
    expected = [fed[s] for s in reduced.source_positions.tolist()]
    assert prepared.position_ids[0, start:end].tolist() == expected
    assert int(prepared.position_ids[0, end]) == int(full.position_ids[0, full.visual_span[1]])
