"""Run a sweep: every cell through lmms-eval in-process, one row and one sample log per cell.

Each finished cell writes ``<results>/cells/<cell_id>.json`` (its row) and
``<results>/runs/<cell_id>/samples.jsonl`` (per-sample answers, scores and accounting), both
atomically (temp file + rename). A rerun skips cells whose row exists, so a killed sweep
resumes where it stopped. A cell that fails (unknown method, impossible budget, model that
cannot load) is written as a row with ``status=error`` and its reason; the other cells run.
After every cell the leaderboard (CSV, Markdown) is rebuilt from all rows.

A task must have a scorer in ``tokbench.harness.scoring`` (else the sweep is refused before its first
cell); a group task (mvbench) is one cell over all its subtasks; a judged task (activitynetqa)
checks its judge before any sample runs. The row's columns are computed by ``tokbench.harness.row``.
Several workers can run one sweep together (``run_sweep``; cells are claimed through
``tokbench.harness.claims``), and a worker started under torchrun runs each cell data parallel.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tokbench.harness.atomic_files import atomic_write
from tokbench.harness.claims import DEFAULT_STALE_AFTER_S
from tokbench.harness.config import Cell, SweepConfig, check_tasks
from tokbench.harness.judge import check_judge
from tokbench.harness.row import measured_columns
from tokbench.harness.scoring import (
    GROUP_TASKS,
    JUDGED_TASKS,
    sample_groups,
    sample_score,
    scoring_for,
)
from tokbench.harness.versions import versions

_TASK_MANAGERS: dict[tuple[str, ...], Any] = {}


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

    from tokbench.harness.lmms_plugin import TokbenchLMM
    from tokbench.harness.runner import measure_prefill_flops

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
        distributed_executor_backend="torchrun" if torch.distributed.is_initialized() else "accelerate",  # as lmms-eval's CLI
    )
    if results is None:  # a rank other than 0 of a data-parallel cell: rank 0 builds the row
        return {}
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


def run_sweep(config: SweepConfig, progress: bool = True, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[dict[str, Any]]:
    """Run every unfinished cell; return all rows (finished earlier or now).

    Safe to start as several workers on one results folder (one per GPU or node): a worker
    claims a cell before running it (``tokbench.harness.claims``), so each cell runs once; when every
    unfinished cell is claimed by a live worker it waits, and takes over the cell of a worker
    that died (claim older than ``stale_after_s``, or its pid gone on this host). It returns
    once every cell has a row. A worker that lost its claim (presumed dead, then came back)
    does not write the row.

    Started under torchrun / ``accelerate launch`` (``WORLD_SIZE`` > 1), the worker's ranks run
    each cell data parallel through lmms-eval: rank 0 claims cells and announces each to the
    other ranks (``_follow_cells``), lmms-eval splits its samples, and rank 0 writes the row.
    """
    from tokbench.harness.claims import ClaimBoard
    from tokbench.harness.distributed import join_process_group, leave_process_group

    check_tasks(config)
    rank, world_size = join_process_group()
    if rank != 0:
        _follow_cells(config)
        leave_process_group()
        return []
    board = ClaimBoard(config.results_dir / "claims", stale_after_s)
    cells = config.cells()
    adapters: dict[str, Any] = {}
    bar = tqdm(total=len(cells), desc="cells", disable=not progress)
    while True:
        pending = [cell for cell in cells if not cell_row_path(config, cell).exists()]
        bar.n = len(cells) - len(pending)
        bar.refresh()
        if not pending:
            break
        cell, claim = next(((cell, c) for cell in pending if (c := board.try_claim(cell.cell_id)) is not None), (None, None))
        if claim is None:  # all running elsewhere: wait for them, or for one to go stale
            time.sleep(min(2.0, board.heartbeat_s))
            continue
        with claim:
            if cell_row_path(config, cell).exists():
                continue  # finished by another worker between the listing and the claim
            bar.set_postfix_str(f"{cell.method} {cell.budget_label}")
            row = _run_claimed_cell(config, cell, adapters, world_size)
            if not claim.still_mine():
                print(f"tokbench sweep: worker {board.worker} lost its claim on {cell.cell_id} (presumed dead); row not written", file=sys.stderr)
                continue
            atomic_write(cell_row_path(config, cell), json.dumps(row, indent=1, default=str))
        print(f"tokbench sweep: worker {board.worker} ran {cell.cell_id} ({row['status']})", file=sys.stderr)
        write_complete_reports(config)
    bar.close()
    if world_size > 1:
        _announce(None)  # the other ranks stop following
        leave_process_group()
    return write_complete_reports(config)


def _adapter(config: SweepConfig, cell: Cell, adapters: dict[str, Any]):
    """The cell's model, loaded once per worker, on this rank's own device."""
    from tokbench.harness.distributed import rank_device
    from tokbench.harness.models import load_adapter

    if cell.model.name not in adapters:
        options = dict(cell.model.options)
        adapters[cell.model.name] = load_adapter(cell.model.pretrained, device=rank_device(config.device), dtype=config.dtype, **options)
    return adapters[cell.model.name]


def _run_claimed_cell(config: SweepConfig, cell: Cell, adapters: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The cell's row, or its error row; records where it ran (host, device, world size)."""
    if world_size > 1:
        _announce(cell.cell_id)
    try:
        adapter = _adapter(config, cell, adapters)
        row, device = run_cell(config, cell, adapter), str(adapter.device)
    except Exception as exc:  # the failure becomes this cell's row; other cells still run
        row, device = error_row(config, cell, exc), None
    row.update({"host": socket.gethostname(), "device": device, "world_size": world_size})
    return row


def _announce(cell_id: str | None) -> str | None:
    """Rank 0 sends the id of the cell it runs next (None: no more); the other ranks receive it."""
    import torch.distributed as dist

    box = [cell_id]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _follow_cells(config: SweepConfig) -> None:
    """A rank other than 0 of a data-parallel worker: run every cell rank 0 announces, with it.

    A cell's failure is recorded by rank 0 from its own run; a failure on one rank only (e.g.
    out of memory on one GPU) leaves the others waiting in lmms-eval's collectives.
    """
    cells = {cell.cell_id: cell for cell in config.cells()}
    adapters: dict[str, Any] = {}
    while (cell_id := _announce(None)) is not None:
        cell = cells[cell_id]
        try:
            run_cell(config, cell, _adapter(config, cell, adapters))
        except Exception:  # rank 0 hits the same error and writes it into the row
            continue


def _rows_snapshot(config: SweepConfig) -> set[tuple[str, int]]:
    return {(p.name, p.stat().st_mtime_ns) for p in (config.results_dir / "cells").glob("*.json")}


def write_complete_reports(config: SweepConfig) -> list[dict[str, Any]]:
    """Rebuild the leaderboard files until no row appeared or changed while they were built.

    With several workers, the last one to write the files had seen every row written before it
    checked, and any row written later is followed by its writer's own rebuild: the files left
    behind are complete. Each file is replaced atomically, so readers never see half of one.
    """
    from tokbench.harness.report import write_reports

    while True:
        before = _rows_snapshot(config)
        rows = write_reports(config)
        if _rows_snapshot(config) == before:
            return rows
