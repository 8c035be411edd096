"""Run a sweep: every cell through lmms-eval in-process, one row and one sample log per cell.

Each finished cell writes ``<results>/cells/<cell_id>.json`` (its row) and
``<results>/runs/<cell_id>/samples.jsonl`` (per-sample answers, scores and accounting), both
atomically (temp file + rename). A rerun skips cells whose row exists, so a killed sweep
resumes where it stopped. A cell that fails (unknown method, impossible budget, model that
cannot load) is written as a row with ``status=error`` and its reason; the other cells run.
After every cell the leaderboard (CSV, Markdown) is rebuilt from all rows. Several workers can
run one sweep together (``run_sweep``; cells are claimed through ``harness.claims``).
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.atomic_files import atomic_write
from harness.claims import DEFAULT_STALE_AFTER_S
from harness.config import Cell, SweepConfig
from harness.flops import layer_flops
from harness.scoring import accuracy_by_group, sample_score, task_metric
from harness.versions import versions

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


def median_after_warmup(values: list[float]) -> float | None:
    """Median over samples, skipping the first (warm-up) when there are several."""
    values = [v for v in values if v is not None]
    if len(values) > 1:
        values = values[1:]
    return statistics.median(values) if values else None


def paper_tflops(layer_counts_mean: list[float], hidden: int, ffn: int) -> float:
    return sum(layer_flops(n, hidden, ffn) for n in layer_counts_mean) / 1e12


def run_cell(config: SweepConfig, cell: Cell, adapter) -> dict[str, Any]:
    """Evaluate one cell through lmms-eval; return its row (samples are written beside it)."""
    from lmms_eval.evaluator import simple_evaluate

    from harness.lmms_plugin import TokbenchLMM
    from harness.runner import measure_prefill_flops

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
    metric = task_metric(cell.task, results)
    samples = []
    for logged in results["samples"][cell.task]:
        record = lm.records.get((cell.task, logged["doc_id"]))
        value = logged.get(metric)
        samples.append(
            {
                "doc_id": logged["doc_id"],
                "answer": None if record is None else record.answer,
                "error": "no answer recorded" if record is None else record.error,
                "score": sample_score(value),
                "group": value.get("family") if isinstance(value, dict) else None,
                **({} if record is None else {k: v for k, v in record.to_json().items() if k not in ("doc_id", "answer", "error")}),
            }
        )
    atomic_write(samples_path(config, cell), "".join(json.dumps(s, default=str) + "\n" for s in samples))
    ok = [s for s in samples if s["error"] is None]
    scored = [s for s in ok if s["score"] is not None]
    row = base_row(config, cell)
    dims = adapter.text_dims()
    layer_counts = _mean_layer_counts(ok)
    flops, flops_error = [], None
    try:
        flops = [measure_prefill_flops(lm.runner, *lm.videos[(cell.task, s["doc_id"])]) for s in ok[: config.flops_samples]]
    except Exception as exc:  # a method fvcore cannot trace loses that column, not the cell
        flops_error = f"{exc.__class__.__name__}: {exc}"
    row.update(
        {
            "status": "ok",
            "params": ",".join(f"{k}={v}" for k, v in lm.reducer.describe_params().items() if k not in ("retain", "tokens")),
            "metric": metric,
            "n": len(scored),
            "accuracy": statistics.fmean(s["score"] for s in scored) if scored else None,
            "accuracy_lmms_eval": _lmms_metric(results, cell.task, metric),
            "accuracy_by_group": json.dumps(accuracy_by_group(scored)),
            "visual_tokens": _mean(s["visual_tokens"] for s in ok),
            "visual_tokens_layer_avg": _mean(s["visual_tokens_layer_avg"] for s in ok),
            "tflops_measured": statistics.fmean(flops) / 1e12 if flops else None,
            "tflops_paper": paper_tflops(layer_counts, dims["hidden"], dims["ffn"]) if layer_counts else None,
            "vision_ms": median_after_warmup([s["vision_ms"] for s in ok]),
            "reduce_ms": median_after_warmup([s["reduce_ms"] for s in ok]),
            "prefill_ms": median_after_warmup([s["prefill_ms"] for s in ok]),
            "decode_tok_s": median_after_warmup([s["decode_tok_s"] for s in ok]),
            "peak_mem_mb": max((s["peak_mem_mb"] for s in ok), default=None),
            "errors": len(samples) - len(ok),
            "first_error": next((s["error"] for s in samples if s["error"]), flops_error),
            "positions": lm.reducer.position_policy_used,
            "prompt_key": "tokbench (lmms_eval_specific_kwargs: default)",
            "method_info": json.dumps(_summarise_info([s.get("method_info") or {} for s in ok])),
        }
    )
    return row


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _mean_layer_counts(ok: list[dict]) -> list[float]:
    """Per-layer visual-token counts averaged over samples, for the paper FLOPs of the run."""
    counts = [s["layer_counts"] for s in ok if s.get("layer_counts")]
    if not counts:
        return []
    return [statistics.fmean(layer) for layer in zip(*counts)]


def _lmms_metric(results: dict, task: str, metric: str) -> float | None:
    value = results["results"].get(task, {}).get(f"{metric},none")
    return float(value) if isinstance(value, (int, float)) else None


def _summarise_info(infos: list[dict]) -> dict[str, Any]:
    """Numeric method metadata averaged over samples (e.g. the mean K an adaptive method chose)."""
    keys = {k for info in infos for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.fmean(info[k] for info in infos if k in info) for k in sorted(keys)}


def error_row(config: SweepConfig, cell: Cell, exc: BaseException) -> dict[str, Any]:
    row = base_row(config, cell)
    row.update({"status": "error", "first_error": f"{exc.__class__.__name__}: {exc}", "n": 0})
    return row


def run_sweep(config: SweepConfig, progress: bool = True, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[dict[str, Any]]:
    """Run every unfinished cell; return all rows (finished earlier or now).

    Safe to start as several workers on one results folder (one per GPU or node): a worker
    claims a cell before running it (``harness.claims``), so each cell runs once; when every
    unfinished cell is claimed by a live worker it waits, and takes over the cell of a worker
    that died (claim older than ``stale_after_s``, or its pid gone on this host). It returns
    once every cell has a row. A worker that lost its claim (presumed dead, then came back)
    does not write the row.

    Started under torchrun / ``accelerate launch`` (``WORLD_SIZE`` > 1), the worker's ranks run
    each cell data parallel through lmms-eval: rank 0 claims cells and announces each to the
    other ranks (``_follow_cells``), lmms-eval splits its samples, and rank 0 writes the row.
    """
    from harness.claims import ClaimBoard
    from harness.distributed import join_process_group

    rank, world_size = join_process_group()
    if rank != 0:
        _follow_cells(config)
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
    return write_complete_reports(config)


def _adapter(config: SweepConfig, cell: Cell, adapters: dict[str, Any]):
    """The cell's model, loaded once per worker, on this rank's own device."""
    from harness.distributed import rank_device
    from harness.models.llava_onevision import LlavaOnevisionAdapter

    if cell.model.name not in adapters:
        adapters[cell.model.name] = LlavaOnevisionAdapter(cell.model.pretrained, device=rank_device(config.device), dtype=config.dtype)
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
    from harness.report import write_reports

    while True:
        before = _rows_snapshot(config)
        rows = write_reports(config)
        if _rows_snapshot(config) == before:
            return rows
