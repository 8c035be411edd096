"""Leaderboard: cell rows + sample logs -> CSV, Markdown table, per-group table and plots.

Comparisons against the ``full`` baseline of the same model and task are computed (by
``tokbench.harness.row``) from the per-sample logs, on the samples both runs answered without error:
``delta_vs_full`` (accuracy difference), ``agreement_with_full`` (share of identical
answers) and ``p_value_vs_full`` (exact McNemar test on paired correctness).
``tokdense`` = accuracy in percentage points / visual tokens entering the LLM (VQToken).
``reduce_share_of_saved_prefill`` = the method's reduction time / the prefill time it saves
against ``full`` (``reduce_ms / (full prefill_ms - prefill_ms)``): below 1 the method pays for
itself; empty when it saves no prefill time. In-LLM selection (FastV, HoliTom's inner stage)
runs inside the prefill, so its time is already netted out of the saving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tokbench.harness.atomic_files import atomic_path, atomic_write
from tokbench.harness.config import SweepConfig
from tokbench.harness.groups import group_table, groups_markdown
from tokbench.harness.row import compare, reduce_share, tokdense

COLUMNS = [
    "model", "task", "method", "params", "budget", "n", "accuracy", "delta_vs_full",
    "agreement_with_full", "visual_tokens", "visual_tokens_layer_avg", "tflops_measured",
    "tflops_paper", "vision_ms", "reduce_ms", "prefill_ms", "decode_tok_s", "peak_mem_mb",
    "tokdense", "errors", "seed", "versions",
]
EXTRA_COLUMNS = [
    "p_value_vs_full", "reduce_share_of_saved_prefill", "accuracy_lmms_eval", "metric", "accuracy_by_group", "method_info",
    "positions", "geometry", "frames", "prompt_key", "status", "first_error", "cell_id", "host", "device", "world_size",
]
MARKDOWN_COLUMNS = [
    "method", "budget", "n", "accuracy", "delta_vs_full", "agreement_with_full", "p_value_vs_full",
    "visual_tokens", "visual_tokens_layer_avg", "tflops_measured", "tflops_paper", "reduce_ms",
    "prefill_ms", "reduce_share_of_saved_prefill", "tokdense", "errors",
]


def load_samples(results_dir: Path, cell_id: str) -> dict[Any, dict]:
    path = results_dir / "runs" / cell_id / "samples.jsonl"
    if not path.is_file():
        return {}
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def build_table(config: SweepConfig) -> pd.DataFrame:
    results_dir = config.results_dir
    rows = [json.loads(p.read_text()) for p in sorted((results_dir / "cells").glob("*.json"))]
    if not rows:
        return pd.DataFrame(columns=COLUMNS + EXTRA_COLUMNS)
    order = {cell.cell_id: i for i, cell in enumerate(config.cells())}
    rows.sort(key=lambda r: order.get(r["cell_id"], len(order)))
    full_rows = {(r["model"], r["task"]): r for r in rows if r["method"] == "full" and r.get("status") == "ok"}
    for row in rows:
        baseline = full_rows.get((row["model"], row["task"]))
        if row.get("status") == "ok" and baseline:
            row.update(compare(load_samples(results_dir, row["cell_id"]), load_samples(results_dir, baseline["cell_id"])))
            row["reduce_share_of_saved_prefill"] = reduce_share(row, baseline)
        row["tokdense"] = tokdense(row)
    table = pd.DataFrame(rows)
    for column in COLUMNS + EXTRA_COLUMNS:
        if column not in table:
            table[column] = None
    return table[COLUMNS + EXTRA_COLUMNS]


def varying(table: pd.DataFrame) -> list[str]:
    """``model`` and ``task`` where a sweep has more than one of them (they tell rows apart)."""
    return [column for column in ("model", "task") if table[column].nunique() > 1]


def markdown(table: pd.DataFrame) -> str:
    from tabulate import tabulate

    shown = table[varying(table) + MARKDOWN_COLUMNS]
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g", missingval="—")


def plot(table: pd.DataFrame, x: str, path: Path, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[(table["status"] == "ok") & table[x].notna() & table["accuracy"].notna()]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    keys = varying(ok) + ["method"]
    for key, group in ok.groupby(keys, sort=False):
        group = group.sort_values(x)
        label = " / ".join(reversed(key))  # e.g. "full / tiny-llava-ov"
        axis.plot(group[x], group["accuracy"], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("accuracy")
    axis.grid(True, alpha=0.3)
    if not ok.empty:  # an all-error table has no line to label
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def write_reports(config: SweepConfig) -> list[dict[str, Any]]:
    """Rebuild leaderboard.csv / .md, groups.csv / .md and the two plots from all cells."""
    out = config.results_dir
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(config)
    atomic_write(out / "leaderboard.csv", table.to_csv(index=False))
    atomic_write(out / "leaderboard.md", markdown(table) + "\n")
    groups = group_table(table, lambda cell_id: load_samples(out, cell_id))
    atomic_write(out / "groups.csv", groups.to_csv(index=False))
    if not groups.empty:
        atomic_write(out / "groups.md", groups_markdown(groups))
    if not table.empty:
        plot(table, "visual_tokens", out / "accuracy_vs_tokens.png", "visual tokens entering the LLM")
        plot(table, "tflops_paper", out / "accuracy_vs_flops.png", "prefill TFLOPs (paper convention)")
    return table.to_dict("records")
