"""Per-family accuracy intervals and the separations the groups table reports."""

from __future__ import annotations

import pandas as pd
import pytest

from tokbench.harness.groups import group_table, groups_markdown, separations, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _samples(scores_by_group: dict[str, list[float]], error_in: str | None = None) -> dict[int, dict]:
    samples, doc = {}, 0
    for group, scores in scores_by_group.items():
        for score in scores:
            samples[doc] = {"group": group, "score": score, "error": None}
            doc += 1
    if error_in:
        samples[doc] = {"group": error_in, "score": None, "error": "decode failed"}
    return samples


def _table(logs: dict[str, dict[int, dict]]) -> pd.DataFrame:
    rows = [{"model": "m", "method": cell.split("@")[0], "budget": cell.split("@")[1], "n": len(log), "cell_id": cell}
            for cell, log in logs.items()]
    return pd.DataFrame(rows)


def test_group_table_skips_failed_samples_and_reports_intervals():
    logs = {"full@all": _samples({"needle": [1.0] * 18 + [0.0] * 2, "static": [1.0] * 20}, error_in="needle")}
    groups = group_table(_table(logs), logs.__getitem__)
    row = groups.iloc[0]
    assert row["needle"] == pytest.approx(0.9)
    low, high = wilson_interval(18, 20)
    assert row["needle_ci95"] == f"{low:.2f}-{high:.2f}"


def test_separations_need_non_overlapping_intervals():
    logs = {
        "divprune@retain=0.01": _samples({"needle": [1.0] * 19 + [0.0], "static": [1.0] * 10 + [0.0] * 10}),
        "uniform_pool@retain=0.01": _samples({"needle": [1.0] * 5 + [0.0] * 15, "static": [1.0] * 12 + [0.0] * 8}),
        "fastv@retain=0.25": _samples({"needle": [0.0] * 20, "static": [1.0] * 20}),
    }
    groups = group_table(_table(logs), logs.__getitem__)
    found = separations(groups)
    assert [(f["budget"], f["group"], f["best"], f["worst"]) for f in found] == [
        ("retain=0.01", "needle", "divprune", "uniform_pool")
    ]
    assert "divprune" in groups_markdown(groups).split("do not overlap")[1]


def test_no_separation_is_said_plainly():
    logs = {"a@1": _samples({"x": [1.0, 0.0]}), "b@1": _samples({"x": [0.0, 1.0]})}
    assert groups_markdown(group_table(_table(logs), logs.__getitem__)).rstrip().endswith("none")
