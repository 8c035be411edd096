"""Per-sample scores and task metrics read from lmms-eval's logged samples.

lmms-eval tasks log, per sample, the value that their metric's aggregation consumes: a
number (exact_match), or a dict (SynthVQA's ``score``; VideoMME's ``pred_answer`` and
``answer``). ``sample_score`` turns either into 0..1 so that accuracy, agreement and paired
tests are computed the same way for every task, errored samples excluded.
"""

from __future__ import annotations

import statistics
from typing import Any

# Primary metric of the tasks the harness targets (first metric_list entry otherwise).
TASK_METRICS = {
    "synthvqa": "accuracy",
    "synthvqa_val": "accuracy",
    "videomme": "videomme_perception_score",
    "mvbench": "mvbench_accuracy",
    "nextqa_mc_test": "exact_match",
    "egoschema": "submission",
    "egoschema_subset": "score",
    "longvideobench_val_v": "lvb_acc",
    "activitynetqa": "gpt_eval_accuracy",
}


def task_metric(task: str, results: dict[str, Any]) -> str:
    if task in TASK_METRICS:
        return TASK_METRICS[task]
    keys = [k.split(",")[0] for k in results["results"].get(task, {}) if "," in k and not k.endswith("_stderr,none")]
    if not keys:
        raise ValueError(f"task {task!r} reported no metric")
    return keys[0]


def sample_score(value: Any) -> float | None:
    """A logged per-sample metric value as a 0..1 score, or None when it has none."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) / 100.0 if value > 1 else float(value)
    if isinstance(value, dict):
        if "score" in value and isinstance(value["score"], (int, float)):
            return float(value["score"])
        if "pred_answer" in value and "answer" in value:
            return float(str(value["pred_answer"]).strip() == str(value["answer"]).strip())
    return None


def accuracy_by_group(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per question family/category where the task logs one."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        if sample.get("group") is not None:
            groups.setdefault(str(sample["group"]), []).append(sample["score"])
    return {name: statistics.fmean(scores) for name, scores in sorted(groups.items())}
