"""lmms-eval hooks for SynthVQA: video path, prompt, answer-letter parsing and per-family accuracy.

lmms-eval imports this file by path (as a module named ``utils``), so it uses the standard
library only. Videos are resolved against ``data/``, the folder of the split jsonl files.

``synthvqa_process_results`` returns, per sample, the same record under ``accuracy`` and under
``acc_<family>``; ``synthvqa_aggregate`` averages the records' ``score`` (0/1), so each metric
is a fraction in [0, 1]. The records (id, family, pred, answer, score) also land in the
``--log_samples`` output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
LETTERS = "ABCD"
# The instruction after the options. lmms-eval reads it from _synthvqa_base.yaml
# (lmms_eval_specific_kwargs); Python code (the embedded trainer, the benchmarks) imports it from
# here, and tests/test_synthvqa.py checks that the task lmms-eval loads builds its prompt with it.
POST_PROMPT = "Answer with the option's letter from the given choices directly."
_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
_LONE_LOWERCASE = re.compile(r"^\W*([a-d])\W*$")


def synthvqa_doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """The sample's video as a one-element list of absolute paths."""
    return [str(DATA_DIR / doc["video"])]


def synthvqa_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, str] | None = None) -> str:
    """``pre_prompt`` + question, lettered options one per line, then ``post_prompt``."""
    kwargs = lmms_eval_specific_kwargs or {}
    options = "".join(f"{letter}. {option}\n" for letter, option in zip(LETTERS, doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def parse_answer(response: str, options: Sequence[str] = ()) -> str:
    """The option letter a response gives, or "" when it gives none.

    The first capital A-D standing alone ("B", "B.", "(B)", "The answer is B") wins; else a lone
    lowercase letter ("b"); else a response that is exactly one option's text ("red").
    """
    match = _LETTER.search(response) or _LONE_LOWERCASE.match(response)
    if match:
        return match.group(1).upper()
    text = response.strip().strip(".").strip().lower()
    for letter, option in zip(LETTERS, options):
        if text == option.lower():
            return letter
    return ""


def synthvqa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    """Score one sample; the record goes to ``accuracy`` and to its family's ``acc_<family>``."""
    pred = parse_answer(results[0], doc["options"])
    record = {
        "id": doc["id"],
        "family": doc["family"],
        "pred": pred,
        "answer": doc["answer"],
        "score": float(pred == doc["answer"]),
    }
    return {"accuracy": record, f"acc_{doc['family']}": record}


def synthvqa_aggregate(records: list[dict[str, Any]]) -> float:
    """Mean score (fraction correct) of the records."""
    return sum(record["score"] for record in records) / len(records)
