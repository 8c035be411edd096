"""Training on random subsets of the video tokens (``embedded.train_token_subsets``): the draws,
and that a subset prefix is exactly what the full prompt becomes when those tokens are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedded.train_tiny import PromptCodec, parse_args, target_logits, video_pixels
from embedded.train_token_subsets import draw_keep_count, is_subset_step, random_subsets, subset_prefix_embeds
from tokbench.tasks.synthvqa.generate import render_spec, sample_specs


def test_keep_counts_stay_in_the_range_and_are_log_uniform():
    rng = np.random.default_rng(0)
    counts = np.array([draw_keep_count(784, 0.01, 0.3, rng) for _ in range(4000)])
    assert counts.min() >= round(784 * 0.01) and counts.max() <= round(784 * 0.3)
    # log-uniform: half of the draws below the geometric mean of the ends (sqrt(0.003) * 784 = 42.9)
    assert 0.46 < np.mean(counts <= 43) < 0.54
    assert draw_keep_count(10, 0.01, 0.02, rng) == 1  # never zero tokens


def test_subset_steps_start_at_the_first_step_and_follow_the_share():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert not any(is_subset_step(1.0, 100, step, rng) for step in range(100))
    assert not any(is_subset_step(0.0, 0, step, rng) for step in range(100))
    assert rng.bit_generator.state == state  # no draw before the first step or without a share
    assert all(is_subset_step(1.0, 100, step, rng) for step in range(100, 150))
    share = np.mean([is_subset_step(0.25, 0, step, rng) for step in range(4000)])
    assert 0.22 < share < 0.28


@pytest.mark.parametrize("low, high", [(0.0, 0.5), (0.5, 0.2), (0.1, 1.5)])
def test_impossible_keep_ranges_are_refused(low, high):
    with pytest.raises(ValueError, match="keep fractions"):
        draw_keep_count(784, low, high, np.random.default_rng(0))


def test_subsets_are_ascending_distinct_and_independent_per_video():
    keep = random_subsets(3, 50, 7, np.random.default_rng(1))
    assert keep.shape == (3, 7) and keep.dtype == torch.long
    for row in keep:
        assert torch.all(row[1:] > row[:-1]) and 0 <= int(row[0]) and int(row[-1]) < 50
    assert not torch.equal(keep[0], keep[1])
    with pytest.raises(ValueError, match="cannot keep"):
        random_subsets(1, 5, 6, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model_and_codec(tiny_adapter):
    return tiny_adapter.model, PromptCodec(tiny_adapter.tokenizer, tiny_adapter.processor, num_frames=16)


def test_keeping_every_token_reproduces_the_full_prompt(tiny_adapter, model_and_codec):
    model, codec = model_and_codec
    samples = [render_spec(spec) for spec in sample_specs("train", 2)]
    suffixes = [codec.suffix(s.question, s.options, s.answer) for s in samples]
    pixels = video_pixels(tiny_adapter.processor, samples)
    every = torch.arange(codec.num_video_tokens - 1).expand(2, -1)
    with torch.no_grad():
        full, targets = target_logits(model, codec, pixels, suffixes, 1)
        subset, subset_targets = target_logits(model, codec, pixels, suffixes, 1, keep=every)
        few, _ = target_logits(model, codec, pixels, suffixes, 1, keep=every[:, ::40])
    assert torch.equal(targets, subset_targets)
    torch.testing.assert_close(subset, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(few, full, atol=1e-3)  # fewer tokens: a different prompt


def test_subset_prefix_is_head_then_kept_tokens_then_newline(model_and_codec):
    model, codec = model_and_codec
    video = torch.randn(2, 11, model.config.text_config.hidden_size)
    keep = torch.tensor([[0, 4, 9], [1, 2, 3]])
    embeds = subset_prefix_embeds(model.model, codec.head[:-1], video, keep)
    head = len(codec.head) - 1
    assert embeds.shape == (2, head + 3 + 1, video.shape[-1])
    assert torch.equal(embeds[0, head : head + 3], video[0, [0, 4, 9]])
    assert torch.equal(embeds[1, head : head + 3], video[1, [1, 2, 3]])
    assert torch.equal(embeds[:, -1], video[:, -1])


@pytest.mark.parametrize(
    "option, message",
    [
        (["--subset-share", "1.5"], "subset-share"),
        (["--subset-keep", "0", "0.3"], "subset-keep"),
        (["--subset-from", "-1"], "subset-from"),
    ],
)
def test_bad_subset_options_are_usage_errors(option, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", *option])
    assert message in capsys.readouterr().err
