"""The training entry points: they see exactly the evaluation prompt, and they write checkpoints
that the harness loads (the base model, and the VQ-Attention fine-tune that mode=attention reads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedded.eval_clips import clip_accuracy
from embedded.tiny import (
    build_model,
    build_tokenizer,
    save_checkpoint,
)
from embedded.train_curriculum import clip
from embedded.train_targets import AuxiliaryHeads
from embedded.train_tiny import (
    PromptCodec,
    auxiliary_loss,
    chat_prompt,
    freeze_vision,
    parse_args,
    permuted_questions,
    tokenizer_corpus,
    video_tokens,
    vision_loss,
)
from embedded.train_tiny import train as train_tiny
from embedded.train_vq_attention import parse_args as parse_vq_args
from embedded.train_vq_attention import train as train_vq
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.methods.registry import build_reducer
from tokbench.methods.vqtoken import VQ_ATTENTION_FILE
from tokbench.tasks.synthvqa.generate import LETTERS, render_spec, sample_specs
from tokbench.tasks.synthvqa.utils import POST_PROMPT, synthvqa_doc_to_text
from tests.conftest import TEST_SPEC


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory):
    tokenizer = build_tokenizer(tokenizer_corpus(48))
    return save_checkpoint(tmp_path_factory.mktemp("bpe"), TEST_SPEC, build_model(TEST_SPEC, tokenizer), tokenizer)


def test_training_prompt_is_the_evaluation_prompt(bpe_checkpoint):
    adapter = LlavaOnevisionAdapter(str(bpe_checkpoint), device="cpu")
    codec = PromptCodec(adapter.tokenizer, adapter.processor, num_frames=16)
    sample = render_spec(next(sample_specs("test", 1)))
    doc = {"question": sample.question, "options": sample.options}
    context = synthvqa_doc_to_text(doc, {"pre_prompt": "", "post_prompt": POST_PROMPT})
    prompt = adapter.build_prompt(context)
    assert prompt == chat_prompt(adapter.tokenizer, sample.question, sample.options)
    expanded = adapter.processor(text=[prompt], videos=[sample.frames], return_tensors="pt")["input_ids"][0].tolist()
    suffix, n_targets = codec.suffix(sample.question, sample.options, sample.answer)
    assert codec.prefix + suffix[:-n_targets] == expanded
    assert adapter.tokenizer.decode(suffix[-n_targets:]) == f"{sample.answer}<|im_end|>"


def test_option_permutations_move_the_correct_option_to_distinct_letters():
    sample = render_spec(next(sample_specs("train", 1)))
    correct = sample.options[LETTERS.index(sample.answer)]
    questions = permuted_questions(sample, 4, np.random.default_rng(0))
    assert sorted(answer for _, answer in questions) == list(LETTERS)
    for options, answer in questions:
        assert sorted(options) == sorted(sample.options)
        assert options[LETTERS.index(answer)] == correct


def test_train_tiny_writes_a_loadable_checkpoint_with_its_log(tmp_path):
    out = tmp_path / "model"
    args = parse_args(["--out", str(out), "--vision-steps", "1", "--vision-batch", "2", "--steps", "4",
                       "--freeze-vision", "1", "--position-targets", "1", "--object-shape-weight", "3",
                       "--single-frame-steps", "1", "--short-clip-steps", "1", "1", "--short-frames", "5", "12",
                       "--family-weights", "motion=2", "counting=3",
                       "--batch", "2", "--val-count", "6", "--log-every", "1", "--eval-every", "3",
                       "--tokenizer-samples", "48"])
    train_tiny(args, spec=TEST_SPEC)
    log = json.loads((out / "training.json").read_text())
    assert [(entry["step"], entry["frames"]) for entry in log["log"]] == [(1, 1), (2, 1), (3, 5), (4, 12), (5, 16)]
    assert log["log"][0]["vision_only"] and "vision_only" not in log["log"][1]
    assert all(entry["aux_loss"] > 0 for entry in log["log"])
    assert set(log["final_val"]) >= {"accuracy", "acc_needle"}
    adapter = LlavaOnevisionAdapter(str(out), device="cpu")
    assert adapter.model.config.vision_config.image_size == TEST_SPEC.image_size

    more = tmp_path / "continued"
    train_tiny(parse_args(["--out", str(more), "--init", str(out), "--vision-steps", "0", "--steps", "1",
                           "--single-frame-steps", "0",
                           "--short-clip-steps", "0", "--subset-share", "1", "--batch", "2", "--val-count", "6",
                           "--log-every", "1", "--eval-every", "1"]))
    record = json.loads((more / "training.json").read_text())
    assert record["spec"] == log["spec"] and record["previous_run"]["log"] == log["log"]
    assert record["total_minutes"] >= record["minutes"]


def test_freeze_vision_rescales_video_tokens_and_stops_training_the_tower(bpe_checkpoint):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(bpe_checkpoint).train()
    processor = AutoProcessor.from_pretrained(bpe_checkpoint)
    samples = [render_spec(spec) for spec in sample_specs("train", 2)]

    with torch.no_grad():
        before = video_tokens(model, processor, samples)
        factor = freeze_vision(model, processor, samples, target_norm=5.0)
        after = video_tokens(model, processor, samples)
    assert after.norm(dim=-1).mean().item() == pytest.approx(5.0, rel=1e-4)
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-5)
    frozen = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    assert not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_clip_accuracy_scores_key_frame_clips_per_family(bpe_checkpoint):
    adapter = LlavaOnevisionAdapter(str(bpe_checkpoint), device="cpu")
    short = clip_accuracy(adapter.model, adapter.processor, adapter.tokenizer, frames=5, count=24)
    full = clip_accuracy(adapter.model, adapter.processor, adapter.tokenizer, frames=16, count=24)
    assert full["samples"] == 24  # a full-length clip is the video itself
    assert 20 <= short["samples"] < 24  # counting videos with more than 5 key frames are skipped
    assert {f"acc_{family}" for family in ("static", "motion", "needle")} <= set(short)
    assert 0.0 <= short["accuracy"] <= 1.0


def test_vq_attention_training_writes_what_mode_attention_loads(bpe_checkpoint, tmp_path):
    out = tmp_path / "vq"
    args = parse_vq_args(["--base", str(bpe_checkpoint), "--out", str(out), "--steps", "2", "--batch", "1",
                          "--val-count", "6", "--log-every", "1", "--eval-every", "2", "--eval-k", "4",
                          "--k-min", "3", "--k-max", "4", "--ffn", "32"])
    train_vq(args)
    assert (out / VQ_ATTENTION_FILE).is_file()
    assert json.loads((out / "training.json").read_text())["final_val"]["accuracy"] >= 0
    adapter = LlavaOnevisionAdapter(str(out), device="cpu")
    base = LlavaOnevisionAdapter(str(bpe_checkpoint), device="cpu")
    tuned = dict(adapter.model.named_parameters())
    assert any(not torch.equal(p, tuned[name]) for name, p in base.model.named_parameters())  # --train all
    sample = render_spec(next(sample_specs("val", 1)))
    with torch.no_grad():
        video = adapter.encode_video(adapter.pixel_values(sample.frames))
        reduced = build_reducer("vqtoken", {"mode": "attention", "k": 4, "rescale": True}).reduce_visual(video)
    assert reduced.info["random_weights"] is False
    assert reduced.count == max(16, 4) + 1  # max(T, K) rows + the newline
    assert torch.isfinite(reduced.embeddings).all()


def test_object_summaries_add_to_the_vision_stage_and_answer_step_losses_only_when_asked(bpe_checkpoint):
    from transformers import AutoProcessor, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(bpe_checkpoint).train()
    processor = AutoProcessor.from_pretrained(bpe_checkpoint)
    codec = PromptCodec(AutoTokenizer.from_pretrained(bpe_checkpoint), processor, 16)
    rng = np.random.default_rng(0)
    videos = [render_spec(spec) for spec in list(sample_specs("train", 4))[::3]]  # static and order
    frames = [clip(sample, 1, rng) for sample in videos]
    patch_tokens: list[torch.Tensor] = []
    model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: patch_tokens.__setitem__(slice(None), [out]))
    width = TEST_SPEC.text_hidden
    plain = AuxiliaryHeads(width)
    summary = AuxiliaryHeads(width, object_summary_weight=2.0)
    summary.load_state_dict(plain.state_dict(), strict=False)

    with torch.no_grad():
        assert vision_loss(model, processor, summary, frames, TEST_SPEC, patch_tokens) > vision_loss(
            model, processor, plain, frames, TEST_SPEC, patch_tokens
        )
        patches = torch.randn(2 * 16, (TEST_SPEC.image_size // TEST_SPEC.patch_size) ** 2, width).requires_grad_()
        hidden = torch.randn(2, len(codec.prefix), width)
        losses = [auxiliary_loss(h, videos, TEST_SPEC, codec, patches, hidden, hidden) for h in (plain, summary)]
    assert losses[1] > losses[0]
