"""The sweep end to end through lmms-eval: rows, failures as rows, resume, report files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tokbench.harness.config import parse_config
from tokbench.harness.report import COLUMNS, reduce_share
from tokbench.harness.sweep import run_sweep

CONFIG = {
    "name": "smoke",
    "models": [{"name": "tiny", "pretrained": None}],
    "tasks": ["synthvqa"],
    "frames": 4,
    "limit": 4,
    "seed": 0,
    "max_new_tokens": 3,
    "methods": [
        {"method": "uniform_pool", "budgets": [{"retain": 0.25}, {"retain": 0.5}, {"tokens": 2}]},
        {"method": "fastv", "params": {"K": 1}, "budgets": [{"retain": 0.5}]},
        {"method": "nosuch"},
        {"method": "fastv", "params": {"K": 10}},
    ],
}


@pytest.fixture(scope="module")
def sweep(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    raw = {**CONFIG, "output_dir": str(out), "models": [{"name": "tiny", "pretrained": tiny_checkpoint}]}
    config = parse_config(raw, out)
    rows = run_sweep(config, progress=False)
    return config, rows


def test_every_cell_has_a_row(sweep):
    config, rows = sweep
    assert len(rows) == len(config.cells()) == 7
    table = pd.read_csv(config.results_dir / "leaderboard.csv")
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert (config.results_dir / "leaderboard.md").read_text().startswith("| method")
    assert (config.results_dir / "accuracy_vs_tokens.png").stat().st_size > 0
    assert (config.results_dir / "accuracy_vs_flops.png").stat().st_size > 0


def test_ok_rows_fill_every_column(sweep):
    config, _ = sweep
    table = pd.read_csv(config.results_dir / "leaderboard.csv")
    ok = table[table["status"] == "ok"]
    assert list(ok["method"]) == ["full", "uniform_pool", "uniform_pool", "uniform_pool", "fastv"]
    filled = ok[COLUMNS].drop(columns=["decode_tok_s"])  # None when the answer is a single token
    assert not filled.isna().any().any(), filled.isna().sum()
    assert ((ok["accuracy"] >= 0) & (ok["accuracy"] <= 1)).all()
    full = ok[ok["method"] == "full"].iloc[0]
    assert full["delta_vs_full"] == 0 and full["agreement_with_full"] == 1
    pooled = ok[ok["budget"] == "tokens=2"].iloc[0]
    assert pooled["visual_tokens"] == 3  # 2 tokens + the newline
    assert pooled["tflops_measured"] < full["tflops_measured"]
    fast = ok[ok["method"] == "fastv"].iloc[0]
    assert fast["visual_tokens"] == full["visual_tokens"] > fast["visual_tokens_layer_avg"]


def test_failed_cells_are_rows_with_reasons(sweep):
    config, _ = sweep
    table = pd.read_csv(config.results_dir / "leaderboard.csv")
    failed = table[table["status"] == "error"].set_index("method")["first_error"]
    assert "unknown method 'nosuch'" in failed["nosuch"]
    assert "beyond" in failed["fastv"]


def test_samples_are_logged_with_accounting(sweep):
    config, rows = sweep
    full = next(r for r in rows if r["method"] == "full")
    lines = (config.results_dir / "runs" / full["cell_id"] / "samples.jsonl").read_text().splitlines()
    sample = json.loads(lines[0])
    assert len(lines) == 4 and sample["error"] is None and sample["visual_tokens"] == 17
    assert sample["score"] in (0.0, 1.0) and sample["group"]


def test_rerun_resumes_without_recomputing(sweep):
    config, _ = sweep
    cells = sorted((config.results_dir / "cells").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    cells[1].unlink()
    rows = run_sweep(config, progress=False)
    assert len(rows) == 7
    for path, stamp in stamps.items():
        if path != cells[1]:
            assert path.stat().st_mtime_ns == stamp
    assert cells[1].exists()


def test_lmms_eval_resolves_the_plugin():
    from lmms_eval.models import get_model

    assert get_model("tokbench").__name__ == "TokbenchLMM"


def test_lmms_eval_resolves_the_plugin_when_the_plugin_is_imported_first():
    """Importing the model class before lmms-eval's registry must not leave tokbench out of it."""
    import subprocess
    import sys

    code = "import tokbench.harness.lmms_plugin; from lmms_eval.models import get_model; print(get_model('tokbench').__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "TokbenchLMM", done.stderr[-500:]


def test_reduce_share_of_saved_prefill():
    full = {"method": "full", "prefill_ms": 100.0, "reduce_ms": 0.0}
    assert reduce_share({"method": "divprune", "reduce_ms": 5.0, "prefill_ms": 60.0}, full) == 5.0 / 40.0
    assert reduce_share({"method": "fastv", "reduce_ms": 0.1, "prefill_ms": 120.0}, full) is None  # saves nothing
    assert reduce_share(full, full) is None
    assert reduce_share({"method": "uniform_pool", "reduce_ms": None, "prefill_ms": 50.0}, full) is None


def test_markdown_names_the_model_when_a_sweep_has_several():
    import pandas as pd

    from tokbench.harness.report import MARKDOWN_COLUMNS, markdown

    row = dict.fromkeys(MARKDOWN_COLUMNS)
    rows = [{**row, "model": model, "task": "t", "method": "full"} for model in ("base", "tuned")]
    assert "tuned" in markdown(pd.DataFrame(rows))
    assert "| model" not in markdown(pd.DataFrame(rows[:1]))
