"""Run a sweep: every cell through lmms-eval in-process, one row and one sample log per cell.

Each finished cell writes ``<results>/cells/<cell_id>.json`` (its row) and
``<results>/runs/<cell_id>/samples.jsonl`` (per-sample answers, scores and accounting), both
atomically (temp file + rename). A rerun skips cells whose row exists, so a killed sweep
resumes where it stopped. A cell that fails (unknown method, impossible budget, model that
cannot load) is written as a row with ``status=error`` and its reason; the other cells run.
After every cell the leaderboard (CSV, Markdown) is rebuilt from all rows.

A task must have a scorer in ``harness.scoring`` (else the sweep is refused before its first
cell); a group task (mvbench) is one cell over all its subtasks; a judged task (activitynetqa)
checks its judge before any sample runs. The row's columns are computed by ``harness.row``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.config import Cell, SweepConfig, check_tasks
from harness.judge import check_judge
from harness.row import measured_columns
from harness.scoring import (
    GROUP_TASKS,
    JUDGED_TASKS,
    sample_groups,
    sample_score,
    scoring_for,
)
from harness.versions import versions

_TASK_MANAGERS: dict[tuple[str, ...], Any] = {}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def cell_row_path(config: SweepConfig, cell: Cell) -> Path:
    return config.results_dir / "cells" / f"{cell.cell_id}.json"


def samples_path(config: SweepConfig, cell: Cell) -> Path:
    return config.results_dir / "runs" / cell.cell_id / "samples.jsonl"


def task_manager(include_path: list[str]):
    from lmms_eval.tasks import TaskManager

    key = tuple(include_path)
    if key not in _TASK_MANAGERS:
        _TASK_MANAGERS[key] = TaskManager("WARNING", include_path=list(include_path), model_name="tokbench")
    return _TASK_MANAGERS[key]


def base_row(config: SweepConfig, cell: Cell) -> dict[str, Any]:
    return {
        "model": cell.model.name,
        "task": cell.task,
        "method": cell.method,
        "params": cell.params_label,
        "budget": cell.budget_label,
        "frames": config.frames,
        "seed": config.seed,
        "versions": versions(),
        "cell_id": cell.cell_id,
    }


def run_cell(config: SweepConfig, cell: Cell, adapter) -> dict[str, Any]:
    """Evaluate one cell through lmms-eval; return its row (samples are written beside it)."""
    from lmms_eval.evaluator import simple_evaluate

    from harness.lmms_plugin import TokbenchLMM
    from harness.runner import measure_prefill_flops

    if cell.task in JUDGED_TASKS:  # before any compute: an unreachable judge fails the cell in seconds
        check_judge(cell.task, config.judge_url)
    torch.manual_seed(config.seed)
    lm = TokbenchLMM(
        pretrained=cell.model.pretrained,
        method=cell.method,
        max_frames_num=config.frames,
        max_new_tokens=config.max_new_tokens,
        adapter=adapter,
        **cell.method_params,
    )
    manager = task_manager(config.include_path)
    results = simple_evaluate(
        model=lm,
        tasks=[cell.task],
        limit=config.limit,
        log_samples=True,
        task_manager=manager,
        random_seed=config.seed,
        numpy_random_seed=config.seed,
        torch_random_seed=config.seed,
        fewshot_random_seed=config.seed,
        bootstrap_iters=0,
        verbosity="WARNING",
    )
    samples = cell_samples(cell.task, results, lm.records)
    atomic_write(samples_path(config, cell), "".join(json.dumps(s, default=str) + "\n" for s in samples))
    ok = [s for s in samples if s["error"] is None]
    flops, flops_error = [], None
    try:
        flops = [measure_prefill_flops(lm.runner, *lm.videos[(s["task"], s["lmms_doc_id"])]) for s in ok[: config.flops_samples]]
    except Exception as exc:  # a method fvcore cannot trace loses that column, not the cell
        flops_error = f"{exc.__class__.__name__}: {exc}"
    row = base_row(config, cell)
    measured = measured_columns(cell.task, samples, flops, flops_error, adapter.text_dims())
    row.update(
        {
            "status": "ok",
            "geometry": adapter.geometry_name,
            "params": ",".join(f"{k}={v}" for k, v in lm.reducer.describe_params().items() if k not in ("retain", "tokens")),
            **measured,
            "accuracy_by_group": json.dumps(measured["accuracy_by_group"]),
            "method_info": json.dumps(measured["method_info"]),
            "positions": lm.reducer.position_policy_used,
            "prompt_key": "tokbench (lmms_eval_specific_kwargs: default)",
        }
    )
    return row


def cell_samples(task: str, results: dict, records: dict) -> list[dict[str, Any]]:
    """Per-sample records of a cell: lmms-eval's logged sample (its metric value, 0..1 score and
    categories) joined with the plugin's record (answer, error, accounting). A group task's cover
    all its subtasks, each subtask one of its groups, ``doc_id`` then ``<subtask>/<doc_id>``.
    """
    subtasks = GROUP_TASKS.get(task, (task,))
    missing = [name for name in subtasks if name not in results["samples"]]
    if missing:
        raise ValueError(f"task {task!r}: lmms-eval logged no samples for {', '.join(missing)}")
    samples = []
    for subtask in subtasks:
        for logged in results["samples"][subtask]:
            record = records.get((subtask, logged["doc_id"]))
            error = "no answer recorded" if record is None else record.error
            labels = ([subtask.removeprefix(f"{task}_")] if subtask != task else []) + sample_groups(subtask, logged)
            value = logged.get(scoring_for(subtask).metric)
            samples.append(
                {
                    "doc_id": logged["doc_id"] if subtask == task else f"{subtask}/{logged['doc_id']}",
                    "task": subtask,
                    "lmms_doc_id": logged["doc_id"],
                    "answer": None if record is None else record.answer,
                    "error": error,
                    "score": None if error else sample_score(subtask, logged),
                    "group": labels,
                    "metric_value": value,
                    **({} if record is None else {k: v for k, v in record.to_json().items() if k not in ("doc_id", "answer", "error")}),
                }
            )
    return samples


def error_row(config: SweepConfig, cell: Cell, exc: BaseException) -> dict[str, Any]:
    row = base_row(config, cell)
    row.update({"status": "error", "first_error": f"{exc.__class__.__name__}: {exc}", "n": 0})
    return row


def run_sweep(config: SweepConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run every unfinished cell; return all rows (finished earlier or now)."""
    from harness.models import load_adapter
    from harness.report import write_reports

    check_tasks(config)
    cells = config.cells()
    adapters: dict[str, Any] = {}
    bar = tqdm(cells, desc="cells", disable=not progress)
    for cell in bar:
        path = cell_row_path(config, cell)
        if path.exists():
            continue
        bar.set_postfix_str(f"{cell.method} {cell.budget_label}")
        try:
            if cell.model.name not in adapters:
                adapters[cell.model.name] = load_adapter(cell.model.pretrained, device=config.device, dtype=config.dtype)
            row = run_cell(config, cell, adapters[cell.model.name])
        except Exception as exc:  # the failure becomes this cell's row; other cells still run
            row = error_row(config, cell, exc)
        atomic_write(path, json.dumps(row, indent=1, default=str))
        write_reports(config)
    return write_reports(config)
