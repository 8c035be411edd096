"""Per-group accuracy (task categories: SynthVQA families, MVBench subtasks, ...) with 95% intervals.

``group_table`` gives one row per cell: for each group its accuracy and Wilson score interval
(95%), computed from the cell's per-sample log over the samples it answered without error.
``separations`` lists, per budget, the groups on which two methods' intervals do not overlap:
the evidence that a task can rank reducers at that budget rather than leave them tied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from tokbench.harness.row import group_scores

Z_95 = 1.959963984540054


def wilson_interval(correct: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def group_table(table: pd.DataFrame, load_samples: Callable[[str], dict[Any, dict]]) -> pd.DataFrame:
    """Accuracy and 95% Wilson interval per group, one row per cell that logged groups.

    ``load_samples(cell_id)`` returns a cell's per-sample log keyed by doc id.
    """
    records = []
    for _, row in table.iterrows():
        groups = group_scores(load_samples(row["cell_id"]).values())
        if not groups:
            continue
        record: dict[str, Any] = {"model": row["model"], **_task(row), "method": row["method"], "budget": row["budget"], "n": row["n"]}
        for name, scores in groups.items():
            low, high = wilson_interval(sum(scores), len(scores))
            record[name] = sum(scores) / len(scores)
            record[f"{name}_ci95"] = f"{low:.2f}-{high:.2f}"
        records.append(record)
    return pd.DataFrame(records)


def _task(row) -> dict[str, Any]:
    """The row's task, when the table has one (a sweep may hold several; groups are per task)."""
    return {"task": row["task"]} if "task" in row else {}


def separations(groups: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, task, budget, group): the best and worst reducer when their 95% intervals do not overlap
    (the ``full`` baseline is not a reducer and is left out)."""
    found = []
    if groups.empty:
        return found
    names = [c[: -len("_ci95")] for c in groups.columns if c.endswith("_ci95")]
    reducers = groups[groups["method"] != "full"]
    keys = ["model", "task", "budget"] if "task" in groups else ["model", "budget"]
    for key, rows in reducers.groupby(keys, sort=False):
        for name in names:
            scored = rows[rows[name].notna()]
            if len(scored) < 2:
                continue
            best, worst = scored.loc[scored[name].idxmax()], scored.loc[scored[name].idxmin()]
            best_low = float(best[f"{name}_ci95"].split("-")[0])
            worst_high = float(worst[f"{name}_ci95"].split("-")[1])
            if worst_high < best_low:
                found.append(
                    {
                        **dict(zip(keys, key)), "group": name,
                        "best": best["method"], "best_accuracy": best[name], "best_ci95": best[f"{name}_ci95"],
                        "worst": worst["method"], "worst_accuracy": worst[name], "worst_ci95": worst[f"{name}_ci95"],
                    }
                )
    return found


def groups_markdown(groups: pd.DataFrame) -> str:
    """The per-group table ("accuracy (95% interval)" per group), then the separations it shows."""
    from tabulate import tabulate

    single_task = "task" in groups and groups["task"].nunique() <= 1  # then the column says nothing
    shown = groups[[c for c in groups.columns if not c.endswith("_ci95") and not (c == "task" and single_task)]].copy()
    for name in [c[: -len("_ci95")] for c in groups.columns if c.endswith("_ci95")]:
        shown[name] = [
            "—" if pd.isna(acc) else f"{acc:.2f} ({ci})" for acc, ci in zip(groups[name], groups[f"{name}_ci95"])
        ]
    text = tabulate(shown, headers="keys", tablefmt="github", showindex=False) + "\n"
    found = separations(groups)
    text += "\nGroups on which two methods' 95% intervals do not overlap (best vs worst at a budget):\n\n"
    if not found:
        return text + "none\n"
    found = pd.DataFrame(found).drop(columns=["task"] if single_task else [])
    return text + tabulate(found, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f") + "\n"
