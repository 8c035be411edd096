"""lmms-eval's real video tasks, their installed YAML and utils.py unchanged, on stand-in rows of
each task's dataset schema (tests/real_task_standins.py): per-sample scores against each task's
own metric, and one sweep over all of them (full, a pre-LLM and an in-LLM reducer) with a missing
video per task, a frame-folder video, a group task, a judged task, and refused tasks.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tokbench.harness.config import ConfigError, load_config, parse_config
from tokbench.harness.scoring import GROUP_TASKS, MVBENCH_SUBTASKS, sample_score, scoring_for
from tests.real_task_standins import (
    StubJudge,
    build_home,
    mvbench_standins,
    refused_url,
    standins,
)

TASKS = ["videomme", "mvbench", "egoschema_subset", "longvideobench_val_v", "nextqa_mc_test", "mlvu_dev", "activitynetqa"]
SINGLE_TASKS = [t for t in TASKS if t != "mvbench"] + ["mvbench_action_antonym"]
REPO_TASKS = str(Path(__file__).resolve().parents[1] / "tasks")
METHODS = ["full", "uniform_pool", "fastv"]  # the baseline, a pre-LLM and an in-LLM reducer
RESPONSES = ["A", "B", "C", "D", "The best answer is B.", "(C)", "", "yes", "no"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """$HF_HOME with every task's stand-in rows and videos; the stand-in judge serving."""
    path = tmp_path_factory.mktemp("hf_home")
    tasks = {**standins(rows=3), **mvbench_standins(MVBENCH_SUBTASKS)}
    build_home(path, tasks)
    from lmms_eval.api.task import (
        _resolve_hf_datasets_cache_dir,  # lru_cached: resolved once per process
    )

    with pytest.MonkeyPatch.context() as patch, StubJudge() as judge_url:
        patch.setenv("HF_HOME", str(path))
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(path / "datasets"))
        patch.setenv("OPENAI_API_URL", judge_url)
        _resolve_hf_datasets_cache_dir.cache_clear()
        yield path, tasks, judge_url
    _resolve_hf_datasets_cache_dir.cache_clear()


def _task_object(name: str):
    """The task as lmms-eval builds it from its installed YAML (datasets from the stand-in cache)."""
    from lmms_eval.tasks import get_task_dict

    from tokbench.harness.sweep import task_manager

    return get_task_dict([name], task_manager([REPO_TASKS]))[name]


@pytest.mark.parametrize("task", SINGLE_TASKS + ["synthvqa"])
def test_per_sample_scores_average_to_the_tasks_own_metric(home, task):
    """Mixed right/wrong/unparseable answers through the task's own process_results: the mean of
    our per-sample scores equals the task's own aggregation (MLVU: per task type, its metric being
    the mean over its seven task types)."""
    obj = _task_object(task)
    scoring = scoring_for(task)
    docs = list(obj.test_docs())[:6]
    logged = [{"doc": dict(doc), **obj.process_results(doc, [response])} for doc in docs for response in RESPONSES]
    aggregate = obj.aggregation()[scoring.metric]
    takes_args = aggregate.__code__.co_argcount > 1

    def own_metric(samples):
        values = [s[scoring.metric] for s in samples]
        return (aggregate(values, None) if takes_args else aggregate(values)) / scoring.scale

    def mean_score(samples):
        scores = [sample_score(task, s) for s in samples]
        kept = [x for x in scores if x is not None]
        return sum(kept) / len(kept)

    if task == "mlvu_dev":
        for task_type in {s["doc"]["task_type"] for s in logged}:
            of_type = [s for s in logged if s["doc"]["task_type"] == task_type]
            assert own_metric(of_type) * 7 == pytest.approx(mean_score(of_type), abs=1e-9)
        return
    assert 0 < mean_score(logged) < 1  # the check sees both right and wrong answers
    assert own_metric(logged) == pytest.approx(mean_score(logged), abs=1e-5)  # longvideobench rounds to 5 places


@pytest.fixture(scope="module")
def sweep(home, tiny_checkpoint, tmp_path_factory):
    from tokbench.harness.sweep import run_sweep

    _, _, judge_url = home
    out = tmp_path_factory.mktemp("real_results")
    raw = {
        "name": "real", "output_dir": str(out), "models": [{"name": "tiny", "pretrained": tiny_checkpoint}],
        "tasks": TASKS, "frames": 4, "limit": 3, "seed": 0, "max_new_tokens": 3, "flops_samples": 0,
        "judge_url": judge_url,
        "methods": [{"method": "uniform_pool", "budgets": [{"retain": 0.5}]}, {"method": "fastv", "params": {"K": 1}, "budgets": [{"retain": 0.5}]}],
    }
    config = parse_config(raw, out)
    rows = run_sweep(config, progress=False)
    return config, rows


def _samples(config, row) -> list[dict]:
    return [json.loads(line) for line in (config.results_dir / "runs" / row["cell_id"] / "samples.jsonl").read_text().splitlines()]


def test_every_task_and_method_has_an_ok_row_with_its_missing_video_as_an_error(sweep):
    config, rows = sweep
    assert sorted((r["task"], r["method"]) for r in rows) == sorted((t, m) for t in TASKS for m in METHODS)
    for row in rows:
        assert row["status"] == "ok", (row["task"], row["method"], row["first_error"])
        assert row["errors"] == 1, (row["task"], row["method"], row["first_error"])
        assert "video" in row["first_error"] and "\n" not in row["first_error"]
        samples = _samples(config, row)
        errored = [s for s in samples if s["error"]]
        assert len(errored) == 1 and errored[0]["score"] is None and errored[0]["answer"] is None
        assert row["n"] == sum(s["score"] is not None for s in samples) > 0


def test_accuracy_is_the_mean_score_and_accuracy_lmms_eval_leaves_errors_out(sweep):
    config, rows = sweep
    for row in rows:
        samples = [s for s in _samples(config, row) if s["error"] is None]
        scores = [s["score"] for s in samples if s["score"] is not None]
        assert row["accuracy"] == pytest.approx(sum(scores) / len(scores))
        task = row["task"]
        obj = _task_object(GROUP_TASKS.get(task, (task,))[0])
        scoring = scoring_for(task)
        aggregate = obj.aggregation()[scoring.metric]
        values = [s["metric_value"] for s in samples]
        expected = (aggregate(values, None) if aggregate.__code__.co_argcount > 1 else aggregate(values)) / scoring.scale
        assert row["accuracy_lmms_eval"] == pytest.approx(expected, abs=1e-5)
        assert 0 <= row["accuracy_lmms_eval"] <= 1
        if task != "mlvu_dev":  # MLVU's metric averages its seven task types
            assert row["accuracy_lmms_eval"] == pytest.approx(row["accuracy"], abs=1e-5)


def test_reducers_reduce_on_real_tasks(sweep):
    _, rows = sweep
    by = {(r["task"], r["method"]): r for r in rows}
    for task in TASKS:
        full, pooled, fast = by[(task, "full")], by[(task, "uniform_pool")], by[(task, "fastv")]
        assert pooled["visual_tokens"] < full["visual_tokens"]
        assert fast["visual_tokens_layer_avg"] < full["visual_tokens_layer_avg"]


def test_group_task_is_one_row_over_its_subtasks_and_reads_frame_folders(sweep):
    config, rows = sweep
    full = next(r for r in rows if r["task"] == "mvbench" and r["method"] == "full")
    samples = _samples(config, full)
    assert len({s["doc_id"] for s in samples}) == len(samples) == len(MVBENCH_SUBTASKS) + 1
    groups = json.loads(full["accuracy_by_group"])
    assert set(groups) == set(MVBENCH_SUBTASKS)
    episodic = next(s for s in samples if s["task"] == "mvbench_episodic_reasoning")
    assert episodic["error"] is None and episodic["visual_tokens"] > 0  # a folder of frames, read as a video
    missing = next(s for s in samples if s["error"])
    assert missing["task"] == "mvbench_action_antonym" and "not found" in missing["error"]


def test_task_categories_fill_accuracy_by_group_and_groups_md(sweep):
    config, rows = sweep
    expected = {"videomme": "duration:", "longvideobench_val_v": "duration:", "nextqa_mc_test": "question_type:", "mlvu_dev": "task_type:"}
    for row in rows:
        if row["task"] in expected:
            groups = json.loads(row["accuracy_by_group"])
            assert groups and all(0 <= v <= 1 for v in groups.values())
            assert any(name.startswith(expected[row["task"]]) for name in groups), (row["task"], groups)
    text = (config.results_dir / "groups.md").read_text()
    assert "duration:short" in text and "task_type:plotQA" in text and "episodic_reasoning" in text
    assert re.match(r"\| model +\| task +\| method", text)  # several tasks: each groups row names its task


def test_judged_task_scores_the_judges_yes_share(sweep):
    config, rows = sweep
    row = next(r for r in rows if r["task"] == "activitynetqa" and r["method"] == "full")
    samples = [s for s in _samples(config, row) if s["error"] is None]
    yes = [s["metric_value"]["Correctness"] == "yes" for s in samples]
    assert row["accuracy"] == pytest.approx(sum(yes) / len(yes))


def test_an_unreachable_judge_fails_the_cell_fast_in_one_line(home, tiny_checkpoint, tmp_path, monkeypatch):
    from tokbench.harness.sweep import run_sweep

    monkeypatch.setenv("OPENAI_API_URL", home[2])  # restored after: the probe points the task at the refused URL

    raw = {
        "name": "nojudge", "output_dir": str(tmp_path), "models": [{"name": "tiny", "pretrained": tiny_checkpoint}],
        "tasks": ["activitynetqa"], "frames": 4, "limit": 1, "methods": [], "judge_url": refused_url(),
    }
    started = time.perf_counter()
    (row,) = run_sweep(parse_config(raw, tmp_path), progress=False)
    assert time.perf_counter() - started < 30
    assert row["status"] == "error" and "judge" in row["first_error"] and "\n" not in row["first_error"]
    assert not (tmp_path / "nojudge" / "runs").exists()  # refused before any sample ran


@pytest.mark.parametrize(("task", "reason"), [("egoschema", "remote validation server"), ("videomme_long", "no per-sample scorer")])
def test_unscorable_tasks_are_refused_before_any_compute(tmp_path, task, reason):
    from tokbench.harness.sweep import run_sweep

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"name": "x", "output_dir": str(tmp_path), "models": [{"name": "m", "pretrained": "nowhere"}], "tasks": ["videomme", task], "methods": []}))
    with pytest.raises(ConfigError, match=f"task '{task}'.*{reason}"):
        load_config(path)
    config = parse_config(json.loads(path.read_text()), tmp_path)
    with pytest.raises(ConfigError, match=reason):
        run_sweep(config, progress=False)
    assert not (tmp_path / "x").exists()


def test_lmms_eval_cli_runs_every_task_through_the_plugin(home, tiny_checkpoint, tmp_path):
    """``lmms-eval eval --model tokbench`` on all seven tasks: exits 0, each missing video one
    sample answered ``[tokbench-error]`` (none ends the run)."""
    import os
    import subprocess
    import sys

    from tokbench.harness.lmms_plugin import ERROR_ANSWER

    args = f"pretrained={tiny_checkpoint},method=uniform_pool,retain=0.5,max_frames_num=4,device=cpu,max_new_tokens=3"
    command = [sys.executable, "-m", "lmms_eval", "eval", "--model", "tokbench", "--model_args", args, "--tasks", ",".join(TASKS),
               "--limit", "3", "--log_samples", "--output_path", str(tmp_path)]
    done = subprocess.run(command, check=False, env={**os.environ, "OPENAI_API_URL": home[2]}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for task in SINGLE_TASKS:
        (path,) = tmp_path.glob(f"*/*_samples_{task}.jsonl")
        answers = [json.loads(line)["filtered_resps"] for line in path.read_text().splitlines()]
        assert sum(ERROR_ANSWER in str(a) for a in answers) == 1, (task, answers)
