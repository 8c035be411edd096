"""Per-sample scores read from lmms-eval's logged samples: one table, one entry per supported task.

Each lmms-eval task logs, per sample, the value its metric's aggregation consumes (a number, a
bool, or a dict). ``TASK_SCORING`` says, per task, which logged field carries it, how that value
becomes a 0..1 score that matches the task's own aggregation, which categories the sample falls
in, and where the task's own aggregation function lives (so ``lmms_aggregate`` can recompute the
task's metric on the samples the harness kept). Tests prove, per task, that the mean of the
per-sample scores equals the task's own aggregate on the same samples.

A task missing from the table is refused when the config is read (``unsupported_reason``), as is
a task that cannot be scored here (``REFUSED``: full EgoSchema is scored by a remote server).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskScoring:
    """How one task's logged samples are scored."""

    metric: str  # the logged field (a metric_list name) that carries the per-sample value
    score: Callable[[Any], float | None]  # value -> 0..1; None where the task's metric leaves the sample out
    groups: Callable[[dict[str, Any]], list[str]]  # logged sample -> its category labels
    aggregate: str  # "module:function" of the task's own aggregation
    scale: float  # the aggregation's full mark (100 for percentages, 1 for fractions)


def _no_groups(logged: dict[str, Any]) -> list[str]:
    return []


def _labels(logged: dict[str, Any], metric: str, fields: dict[str, str], source: str = "value") -> list[str]:
    """``name:value`` labels from the logged metric value (``source="value"``) or the logged doc."""
    record = logged.get(metric) if source == "value" else logged.get("doc", {})
    if not isinstance(record, dict):
        return []
    return [f"{name}:{record[key]}" for name, key in fields.items() if record.get(key) not in (None, "")]


def _videomme_score(value: dict) -> float:
    # videomme_aggregate_results counts result["pred_answer"] == result["answer"] (case-sensitive)
    return float(value["pred_answer"] == value["answer"])


def _mvbench_score(value: dict) -> float | None:
    # mvbench_aggregate_results leaves samples with an empty prediction out of its denominator
    return None if value["pred_answer"] == "" else float(value["score"])


def _egoschema_score(value: dict) -> float:
    return float(str(value["ground_truth"]) == str(value["pred"]))  # egoschema_aggregate_score


def _longvideobench_score(value: dict) -> float:
    return float(value["answer"] == value["parsed_pred"])  # eval_multi_choice on a single gold letter


def _mlvu_score(value: dict) -> float:
    return float(value["pred_answer"] == value["answer"])  # mlvu_aggregate_results_dev, per task type


def _activitynetqa_score(value: dict) -> float | None:
    # activitynetqa_aggregate_accuracy: yes / (yes + no); a judgement that is neither is left out
    correctness = str(value["Correctness"]).lower()
    if "yes" in correctness:
        return 1.0
    if "no" in correctness:
        return 0.0
    return None


def _synthvqa_score(value: dict) -> float:
    return float(value["score"])


def _synthvqa_groups(logged: dict[str, Any]) -> list[str]:
    return [str(logged["accuracy"]["family"])]  # the family alone, as SynthVQA's groups.md always named it


SYNTHVQA = TaskScoring("accuracy", _synthvqa_score, _synthvqa_groups, "tokbench.tasks.synthvqa.utils:synthvqa_aggregate", 1.0)
MVBENCH_SUBTASKS = (
    "action_sequence", "moving_count", "action_prediction", "episodic_reasoning", "action_antonym", "action_count",
    "scene_transition", "object_shuffle", "object_existence", "fine_grained_pose", "unexpected_action",
    "moving_direction", "state_change", "object_interaction", "character_order", "action_localization",
    "counterfactual_inference", "fine_grained_action", "moving_attribute", "egocentric_navigation",
)
MVBENCH = TaskScoring("mvbench_accuracy", _mvbench_score, _no_groups, "lmms_eval.tasks.mvbench.utils:mvbench_aggregate_results", 100.0)

TASK_SCORING: dict[str, TaskScoring] = {
    "synthvqa": SYNTHVQA,
    "synthvqa_val": SYNTHVQA,
    "videomme": TaskScoring(
        "videomme_perception_score", _videomme_score,
        lambda s: _labels(s, "videomme_perception_score", {"duration": "duration", "domain": "category", "task_type": "task_category"}),
        "lmms_eval.tasks.videomme.utils:videomme_aggregate_results", 100.0,
    ),
    "mvbench": MVBENCH,  # a group: its samples are its subtasks' (see GROUP_TASKS)
    **{f"mvbench_{name}": MVBENCH for name in MVBENCH_SUBTASKS},
    "egoschema_subset": TaskScoring("score", _egoschema_score, _no_groups, "lmms_eval.tasks.egoschema.utils:egoschema_aggregate_score", 1.0),
    "longvideobench_val_v": TaskScoring(
        "lvb_acc", _longvideobench_score, lambda s: _labels(s, "lvb_acc", {"duration": "duration_group"}),
        "lmms_eval.tasks.longvideobench.utils:longvideobench_aggregate_results", 1.0,
    ),
    "nextqa_mc_test": TaskScoring(
        "exact_match", float, lambda s: _labels(s, "exact_match", {"question_type": "type"}, source="doc"),
        "lmms_eval.api.metrics:mean", 1.0,  # the YAML names the registered aggregation "mean"
    ),
    "mlvu_dev": TaskScoring(
        "mlvu_percetion_score", _mlvu_score, lambda s: _labels(s, "mlvu_percetion_score", {"task_type": "task_type"}),
        "lmms_eval.tasks.mlvu.utils:mlvu_aggregate_results_dev", 100.0,
    ),
    "activitynetqa": TaskScoring(
        "gpt_eval_accuracy", _activitynetqa_score, lambda s: _labels(s, "gpt_eval_accuracy", {"question_type": "type"}),
        "lmms_eval.tasks.activitynetqa.utils:activitynetqa_aggregate_accuracy", 100.0,
    ),
}
GROUP_TASKS = {"mvbench": tuple(f"mvbench_{name}" for name in MVBENCH_SUBTASKS)}
REFUSED = {
    "egoschema": "full EgoSchema's labels are hidden: lmms-eval scores it by posting every answer to a remote "
    "validation server after all samples ran; use egoschema_subset (500 questions with public labels)",
}
JUDGED_TASKS = {"activitynetqa"}  # process_results asks an OpenAI-compatible judge per sample


def unsupported_reason(task: str) -> str | None:
    """Why ``task`` cannot be run by the sweep, or None when it can."""
    if task in REFUSED:
        return f"task {task!r} cannot be scored here: {REFUSED[task]}"
    if task not in TASK_SCORING:
        supported = sorted(name for name in TASK_SCORING if not name.startswith("mvbench_")) + ["mvbench_<subtask>"]
        return f"task {task!r} has no per-sample scorer in harness/scoring.py (supported: {', '.join(supported)})"
    return None


def scoring_for(task: str) -> TaskScoring:
    reason = unsupported_reason(task)
    if reason:
        raise ValueError(reason)
    return TASK_SCORING[task]


def sample_score(task: str, logged: dict[str, Any]) -> float | None:
    """The logged sample's 0..1 score under ``task``'s own metric (None: the metric leaves it out)."""
    scoring = scoring_for(task)
    if scoring.metric not in logged:
        raise ValueError(f"task {task!r}: logged sample {logged.get('doc_id')} has no {scoring.metric!r} value")
    return scoring.score(logged[scoring.metric])


def sample_groups(task: str, logged: dict[str, Any]) -> list[str]:
    return scoring_for(task).groups(logged)


def aggregation_function(task: str) -> Callable:
    module, name = scoring_for(task).aggregate.split(":")
    return getattr(importlib.import_module(module), name)


def lmms_aggregate(task: str, values: list[Any]) -> float | None:
    """``task``'s own aggregation on these logged metric values, scaled to 0..1 (None when empty)."""
    if not values:
        return None
    function = aggregation_function(task)
    takes_args = len(inspect.signature(function).parameters) > 1  # e.g. egoschema_aggregate_score(results, args)
    value = function(values, None) if takes_args else function(values)
    return float(value) / scoring_for(task).scale
