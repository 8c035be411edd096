"""SynthVQA: determinism, balance, family semantics, committed videos, answer parsing, lmms-eval task."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tokbench.tasks.synthvqa import generate as gen
from tokbench.tasks.synthvqa.utils import POST_PROMPT, parse_answer, synthvqa_aggregate

TASK_DIR = Path(gen.__file__).resolve().parent


def committed(split: str) -> list[dict]:
    return [json.loads(line) for line in (gen.DATA_DIR / f"{split}.jsonl").read_text().splitlines()]


def changed_frames(frames: np.ndarray) -> list[int]:
    """Frames that differ from the per-pixel temporal median (the static content)."""
    static = np.median(frames, axis=0)
    return [t for t in range(len(frames)) if np.any(frames[t] != static)]


def correct_option(sample: gen.Sample) -> str:
    return sample.options[gen.LETTERS.index(sample.answer)]


def colour_mask(frames: np.ndarray, name: str) -> np.ndarray:
    """Pixels of exactly one palette colour (backgrounds are muted, so never match)."""
    return (frames == np.array(gen.COLOURS[name], dtype=np.uint8)).all(-1)


def named_colour(question: str) -> str:
    (name,) = (word for word in question.split() if word in gen.COLOURS)
    return name


@pytest.mark.parametrize("family", gen.FAMILIES)
def test_same_seed_same_sample(family: str) -> None:
    a, b, other = gen.render_sample(7, family), gen.render_sample(7, family), gen.render_sample(8, family)
    assert np.array_equal(a.frames, b.frames)
    assert (a.question, a.options, a.answer, a.evidence_frames) == (b.question, b.options, b.answer, b.evidence_frames)
    assert not np.array_equal(a.frames, other.frames)
    assert a.frames.shape == (16, 112, 112, 3) and a.frames.dtype == np.uint8


@pytest.mark.parametrize("family", gen.FAMILIES)
def test_options_four_distinct_with_answer_slot(family: str) -> None:
    for seed in range(20):
        sample = gen.render_sample(seed, family, answer_index=seed % 4)
        assert len(set(sample.options)) == 4
        assert sample.answer == gen.LETTERS[seed % 4]


def test_specs_balance_families_and_letters() -> None:
    specs = list(gen.sample_specs("test", 240))
    assert Counter(s.family for s in specs) == {family: 40 for family in gen.FAMILIES}
    for family in gen.FAMILIES:
        assert Counter(s.answer_index for s in specs if s.family == family) == {i: 10 for i in range(4)}
    train_seeds = {s.seed for s in gen.sample_specs("train", 1000)}
    assert train_seeds.isdisjoint(s.seed for s in specs)


@pytest.mark.parametrize(("split", "count"), [("test", 240), ("val", 120)])
def test_committed_split_is_balanced_and_matches_generator(split: str, count: int) -> None:
    records = committed(split)
    assert len(records) == count
    assert Counter(r["family"] for r in records) == {family: count // 6 for family in gen.FAMILIES}
    assert Counter(r["answer"] for r in records) == {letter: count // 4 for letter in gen.LETTERS}
    for record, spec in zip(records, gen.sample_specs(split, count)):
        sample = gen.render_spec(spec)
        assert (record["question"], record["options"], record["answer"]) == (
            sample.question,
            sample.options,
            sample.answer,
        )


def test_committed_videos_decode_to_rendered_frames() -> None:
    records = committed("test")
    for record in records:
        assert gen.read_video(gen.DATA_DIR / record["video"]).shape == (16, 112, 112, 3)
    for record in records[::20]:
        decoded = gen.read_video(gen.DATA_DIR / record["video"]).astype(np.int16)
        rendered = gen.render_sample(record["seed"], record["family"]).frames
        assert np.abs(decoded - rendered).mean() < 2.0


def test_write_split_reproduces_records_and_frames_and_ensure_split_reuses(tmp_path: Path) -> None:
    """Records are reproduced exactly; videos to within the encoder's rounding.

    Bytes are not compared: one CI machine once encoded the same frames to different bytes
    (libx264 with one thread), so byte equality is not something the generator can promise.
    """
    first = gen.write_split(tmp_path / "a", "val", 6)
    second = gen.write_split(tmp_path / "b", "val", 6)
    committed_lines = (gen.DATA_DIR / "val.jsonl").read_text().splitlines(keepends=True)
    assert first.read_text() == second.read_text() == "".join(committed_lines[:6])
    for record in committed("val")[:6]:
        rendered = gen.render_sample(record["seed"], record["family"]).frames
        for written in (first.parent / record["video"], second.parent / record["video"]):
            decoded = gen.read_video(written).astype(np.int16)
            assert np.abs(decoded - rendered).mean() < 2.0
    video = first.parent / "videos" / "val_00003.mp4"
    stamp = video.stat().st_mtime_ns
    assert gen.ensure_split("val", first.parent, count=6) == first
    assert video.stat().st_mtime_ns == stamp
    video.unlink()
    gen.ensure_split("val", first.parent, count=6)
    assert video.is_file()


@pytest.mark.parametrize("seed", range(12))
def test_needle_visible_in_one_or_two_frames(seed: int) -> None:
    sample = gen.render_sample(seed, "needle")
    assert changed_frames(sample.frames) == list(sample.evidence_frames)
    assert len(sample.evidence_frames) in (1, 2)
    assert sample.evidence_frames == tuple(range(sample.evidence_frames[0], sample.evidence_frames[-1] + 1))
    assert len(sample.objects) == 1 and "colour" in sample.question  # the only object; its colour is asked


@pytest.mark.parametrize("seed", range(12))
def test_counting_flashes_match_answer(seed: int) -> None:
    sample = gen.render_sample(seed, "counting")
    on = colour_mask(sample.frames, named_colour(sample.question)).any(axis=(1, 2))
    assert list(np.flatnonzero(on)) == list(sample.evidence_frames)
    assert on.sum() == int(correct_option(sample))  # every flash is a single frame ...
    assert not (on[1:] & on[:-1]).any() and not (on[2:] & on[:-2]).any()  # ... at least two frames apart


@pytest.mark.parametrize("seed", range(12))
def test_motion_moves_in_answer_direction(seed: int) -> None:
    sample = gen.render_sample(seed, "motion")
    masks = colour_mask(sample.frames[[0, -1]], named_colour(sample.question))
    ys, xs = zip(*(np.argwhere(mask).mean(0) for mask in masks))
    dy, dx = ys[1] - ys[0], xs[1] - xs[0]
    moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    assert moved == correct_option(sample)


@pytest.mark.parametrize("seed", range(12))
def test_order_answer_appears_first(seed: int) -> None:
    sample = gen.render_sample(seed, "order")
    first = sample.frames[sample.evidence_frames[0]]
    present = [name for name in gen.COLOURS if colour_mask(first, name).any()]
    assert present == [correct_option(sample)]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        (" D\n", "D"),
        ("The answer is A", "A"),
        ("Answer: C. blue", "C"),
        ("b", "B"),
        ("red", "A"),
        ("Red.", "A"),
        ("I think it is green", ""),
        ("", ""),
        ("E", ""),
    ],
)
def test_parse_answer(response: str, letter: str) -> None:
    assert parse_answer(response, ["red", "green", "blue", "yellow"]) == letter


def test_task_loads_through_lmms_eval() -> None:
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(TASK_DIR.parent), include_defaults=False)
    tasks = get_task_dict(["synthvqa", "synthvqa_val"], manager)
    task = tasks["synthvqa"]
    docs = list(task.test_docs())
    assert len(docs) == 240 and len(list(tasks["synthvqa_val"].test_docs())) == 120
    doc = docs[0]
    options = "".join(f"{letter}. {option}\n" for letter, option in zip(gen.LETTERS, doc["options"]))
    assert task.doc_to_text(doc) == f"{doc['question']}\n{options}{POST_PROMPT}"
    (video,) = task.doc_to_visual(doc)
    assert Path(video).is_absolute() and Path(video).is_file()
    assert task.doc_to_target(doc) == doc["answer"]
    assert set(task.aggregation()) == {"accuracy"} | {f"acc_{family}" for family in gen.FAMILIES}
    scored = [task.process_results(d, [f"({d['answer']})" if i % 2 else "none"]) for i, d in enumerate(docs[:12])]
    assert all(set(s) == {"accuracy", f"acc_{d['family']}"} for s, d in zip(scored, docs))
    assert synthvqa_aggregate([s["accuracy"] for s in scored]) == 0.5


@pytest.mark.parametrize("family", gen.FAMILIES)
def test_shortest_video_fits_every_family_and_shorter_is_refused(family: str) -> None:
    for seed in range(8):  # counting draws up to 4 flashes, which need every one of the MIN_FRAMES frames
        sample = gen.render_sample(seed, family, num_frames=gen.MIN_FRAMES)
        assert sample.frames.shape[0] == gen.MIN_FRAMES and sample.evidence_frames
    with pytest.raises(ValueError, match="below the minimum"):
        gen.render_sample(0, family, num_frames=gen.MIN_FRAMES - 1)
