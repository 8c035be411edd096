"""The committed embedded-default models answer SynthVQA test well, and a broken reducer cannot.

End to end on the real pipeline (mp4 -> frames -> processor -> vision tower -> reducer -> LLM
-> greedy answer -> lmms-eval's scoring function) on the first 36 test samples (6 per family).
The floors are far below what the model scores and far above chance (25%): a reducer that
loses what the LLM needs falls under them. At 1% of the tokens (8 of 785) the ranking must
show on the first 12 small-object questions: DivPrune, which keeps the most distinct tokens
(the small object among them), answers most of them, and uniform pooling, which averages the
object into the background, answers at least 3 fewer. In attention mode, the VQ-Attention
checkpoint's trained module must answer most of those small-object questions, and a random
module on the base model must stay under the lower floor.
"""

from __future__ import annotations

import json

import pytest
import torch

from embedded.default import default_model
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.harness.runner import Runner
from tokbench.methods.base import ReducedTokens, VideoTokens, keep_all
from tokbench.methods.full import Full
from tokbench.methods.registry import build_reducer
from tokbench.tasks.synthvqa.generate import DATA_DIR
from tokbench.tasks.synthvqa.utils import POST_PROMPT, synthvqa_doc_to_text, synthvqa_process_results

VQ_CHECKPOINT_NAME = "tiny-llava-ov-synthvqa-vqtoken"
SAMPLES = 36
FULL_FLOOR = 0.5
REDUCED_FLOOR = 0.4
SMALL_OBJECTS = 12
SMALL_OBJECT_FLOOR = 0.75
SMALL_OBJECT_GAP = 3 / SMALL_OBJECTS
VQ_SMALL_OBJECT_FLOOR = 0.6


class BlindReducer(Full):
    """A broken reducer: keeps every token but wipes its content (as a bug that zeroes features would)."""

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        kept = keep_all(video)
        return ReducedTokens(torch.zeros_like(kept.embeddings), kept.source_positions, kept.info)


@pytest.fixture(scope="module")
def adapter():
    return LlavaOnevisionAdapter(str(default_model()), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def test_records():
    return [json.loads(line) for line in (DATA_DIR / "test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def docs(test_records):
    return test_records[:SAMPLES]


@pytest.fixture(scope="module")
def small_object_docs(test_records):
    return [doc for doc in test_records if doc["family"] == "small_object"][:SMALL_OBJECTS]


def _accuracy(adapter, reducer, docs) -> float:
    runner = Runner(adapter, reducer, max_frames_num=16)
    scores = []
    for doc in docs:
        context = synthvqa_doc_to_text(doc, {"post_prompt": POST_PROMPT})
        record = runner.answer(doc["id"], str(DATA_DIR / doc["video"]), context, max_new_tokens=4)
        assert record.error is None, record.error
        scores.append(synthvqa_process_results(doc, [record.answer])["accuracy"]["score"])
    return sum(scores) / len(scores)


def test_full_clears_the_floor(adapter, docs):
    assert _accuracy(adapter, build_reducer("full"), docs) >= FULL_FLOOR


def test_a_sane_reducer_at_a_quarter_of_the_tokens_clears_a_lower_floor(adapter, docs):
    assert _accuracy(adapter, build_reducer("divprune", {"retain": 0.25}), docs) >= REDUCED_FLOOR


def test_at_one_percent_diverse_tokens_keep_the_small_object_and_pooled_ones_lose_it(adapter, small_object_docs):
    diverse = _accuracy(adapter, build_reducer("divprune", {"retain": 0.01}), small_object_docs)
    pooled = _accuracy(adapter, build_reducer("uniform_pool", {"retain": 0.01}), small_object_docs)
    assert diverse >= SMALL_OBJECT_FLOOR
    assert pooled <= diverse - SMALL_OBJECT_GAP


def test_a_reducer_that_wipes_the_tokens_misses_the_floor(adapter, docs):
    assert _accuracy(adapter, BlindReducer(), docs) < REDUCED_FLOOR


def test_the_trained_vq_attention_module_reads_the_small_object_and_a_random_one_does_not(adapter, small_object_docs):
    attention = {"mode": "attention", "tokens": 32, "rescale": True}
    tuned = LlavaOnevisionAdapter(str(default_model().parent / VQ_CHECKPOINT_NAME), device="cpu", dtype="float32")
    trained = _accuracy(tuned, build_reducer("vqtoken", attention), small_object_docs)
    random = _accuracy(adapter, build_reducer("vqtoken", {**attention, "allow_random_weights": True}), small_object_docs)
    assert trained >= VQ_SMALL_OBJECT_FLOOR
    assert random < REDUCED_FLOOR
