"""Scale-out: lmms-eval data parallel (torchrun, gloo) and several sweep workers on one folder.

Everything runs on CPU in subprocesses, as a user would start it: ``torchrun ... -m lmms_eval``
with two ranks against one rank; two ``tokbench sweep`` workers started together; a worker
killed mid-cell and the rerun that takes its cell over. Claim mechanics are tested directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tokbench.harness.claims import ClaimBoard
from tokbench.harness.config import load_config

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "checkpoints" / "tiny-llava-ov-synthvqa"
TIMING = {"vision_ms", "reduce_ms", "prefill_ms", "decode_tok_s", "peak_mem_mb"}
WHERE = {"rank", "world_size", "device", "host"}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def without(record: dict, keys: set[str]) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


# --- claims -------------------------------------------------------------------------------


def write_claim(board: ClaimBoard, key: str, host: str, pid: int, age_s: float = 0.0) -> Path:
    path = board.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs", "started": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_claim_is_exclusive_and_released(tmp_path):
    board = ClaimBoard(tmp_path, stale_after_s=60)
    claim = board.try_claim("cell")
    assert claim is not None and [p.name for p in tmp_path.glob("*.claim")] == ["cell.claim"]
    assert ClaimBoard(tmp_path, stale_after_s=60).try_claim("cell") is None  # held by a live worker
    claim.release()
    assert not list(tmp_path.glob("*.claim"))
    again = board.try_claim("cell")
    assert again is not None
    again.release()


def test_stale_claims_are_taken_over_once(tmp_path):
    board = ClaimBoard(tmp_path, stale_after_s=60)
    write_claim(board, "fresh", "other-host", 1)
    assert board.try_claim("fresh") is None  # another host, recent heartbeat: alive
    path = write_claim(board, "old", "other-host", 1, age_s=120)
    taken = board.try_claim("old")
    assert taken is not None and json.loads(path.read_text())["token"] == taken.owner["token"]
    assert ClaimBoard(tmp_path, stale_after_s=60).try_claim("old") is None  # now held by a live worker
    taken.release()


def test_a_dead_pid_on_this_host_is_stale_at_once(tmp_path):
    board = ClaimBoard(tmp_path, stale_after_s=600)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True)
    write_claim(board, "cell", socket.gethostname(), int(finished.stdout))
    claim = board.try_claim("cell")
    assert claim is not None
    claim.release()
    write_claim(board, "mine", socket.gethostname(), os.getpid())  # our pid, an earlier process's token
    claim = board.try_claim("mine")
    assert claim is not None
    claim.release()


def test_heartbeat_keeps_a_claim_fresh_and_a_lost_claim_is_left_alone(tmp_path):
    board = ClaimBoard(tmp_path, stale_after_s=0.5, heartbeat_s=0.05)
    claim = board.try_claim("cell")
    os.utime(claim.path, (time.time() - 10, time.time() - 10))
    time.sleep(0.3)
    assert time.time() - claim.path.stat().st_mtime < 0.5
    # someone takes the cell over (we were presumed dead): we must not delete their claim
    claim.path.write_text(json.dumps({"host": "other-host", "pid": 1, "token": "theirs"}))
    assert not claim.still_mine()
    claim.release()
    assert claim.path.exists() and json.loads(claim.path.read_text())["token"] == "theirs"


# --- lmms-eval data parallel ----------------------------------------------------------------


LIMIT = 5  # odd: the ranks get 3 and 2 documents, so lmms-eval pads rank 1
MODEL_ARGS = f"pretrained={EMBEDDED},method=uniform_pool,retain=0.25,max_frames_num=4,max_new_tokens=2"


def one_rank_in_process(tmp_path: Path) -> tuple[list[dict], float, dict]:
    """The reference: the same evaluation in this process (world size 1), as the sweep runs it."""
    from lmms_eval.evaluator import simple_evaluate

    from tokbench.harness.lmms_plugin import TokbenchLMM
    from tokbench.harness.sweep import task_manager

    accounting = tmp_path / "one.jsonl"
    params = dict(pair.split("=", 1) for pair in MODEL_ARGS.split(","))
    lm = TokbenchLMM(**params, accounting_path=str(accounting))
    results = simple_evaluate(model=lm, tasks=["synthvqa"], limit=LIMIT, log_samples=True, task_manager=task_manager([str(REPO / "tasks")]), bootstrap_iters=0, verbosity="WARNING")
    logged = {s["doc_id"]: s for s in results["samples"]["synthvqa"]}
    return [json.loads(line) for line in accounting.read_text().splitlines()], results["results"]["synthvqa"]["accuracy,none"], logged


def two_ranks_torchrun(tmp_path: Path) -> tuple[list[dict], float, dict]:
    """``torchrun --nproc_per_node 2 -m lmms_eval --model tokbench ...`` (gloo on CPU)."""
    out, accounting = tmp_path / "two", tmp_path / "two.jsonl"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lmms_eval", "--model", "tokbench", "--model_args", f"{MODEL_ARGS},accounting_path={accounting}",
        "--tasks", "synthvqa", "--include_path", str(REPO / "tasks"), "--limit", str(LIMIT),
        "--output_path", str(out), "--log_samples", "--verbosity", "WARNING",
    ]  # fmt: skip
    done = subprocess.run(command, check=False, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["synthvqa"]
    logged = [json.loads(line) for line in next(out.rglob("*_samples_synthvqa.jsonl")).read_text().splitlines()]
    return [json.loads(line) for line in accounting.read_text().splitlines()], results["accuracy,none"], {int(s["doc_id"]): s for s in logged}


def test_two_ranks_give_the_same_samples_and_row_as_one(tmp_path):
    acc2, accuracy2, log2 = two_ranks_torchrun(tmp_path)
    acc1, accuracy1, log1 = one_rank_in_process(tmp_path)
    assert [a["doc_id"] for a in acc2] == list(range(LIMIT))  # every sample once, none lost
    assert {a["rank"] for a in acc2} == {0, 1} and {a["world_size"] for a in acc2} == {2}
    assert [without(a, TIMING | WHERE) for a in acc2] == [without(a, TIMING | WHERE) for a in acc1]
    assert accuracy2 == accuracy1
    assert sorted(log2) == sorted(log1) == list(range(LIMIT))
    for doc_id, sample in log1.items():  # the task's own per-sample result: prediction and score
        assert {k: log2[doc_id]["accuracy"][k] for k in ("pred", "score")} == {k: sample["accuracy"][k] for k in ("pred", "score")}


# --- sweep workers --------------------------------------------------------------------------


def sweep_config(tmp_path: Path, checkpoint: str, name: str, methods: list[dict] | None = None) -> Path:
    raw = {
        "name": name,
        "output_dir": str(tmp_path),
        "models": [{"name": "tiny", "pretrained": checkpoint}],
        "tasks": ["synthvqa"],
        "frames": 4,
        "limit": 4,
        "max_new_tokens": 2,
        "methods": methods
        or [
            {"method": "uniform_pool", "budgets": [{"tokens": 2}]},
            {"method": "fastv", "params": {"K": 1}, "budgets": [{"retain": 0.5}]},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_worker(config: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tokbench.harness.cli", "sweep", str(config), "--quiet"]
    return subprocess.Popen(command, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(config: Path) -> dict[str, dict]:
    folder = load_config(config).results_dir / "cells"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def comparable(row: dict) -> dict:
    return without(row, {"vision_ms", "reduce_ms", "prefill_ms", "decode_tok_s", "peak_mem_mb", "host", "versions"})


def samples_by_doc(config: Path, cell_id: str) -> dict:
    path = load_config(config).results_dir / "runs" / cell_id / "samples.jsonl"
    return {s["doc_id"]: without(s, TIMING) for s in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def killed_then_recovered(tiny_checkpoint, tmp_path_factory):
    """A worker SIGKILLed while it holds a cell; then a rerun (this process) finishes the sweep."""
    from tokbench.harness.sweep import run_sweep

    config = sweep_config(tmp_path_factory.mktemp("killed"), tiny_checkpoint, "killed")
    claims = load_config(config).results_dir / "claims"
    worker = start_worker(config)
    deadline = time.time() + 120
    while not list(claims.glob("*.claim")) and worker.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    left = [p.name[: -len(".claim")] for p in claims.glob("*.claim")]
    assert len(left) == 1 and left[0] not in rows(config), "the worker should die holding an unfinished cell"
    run_sweep(load_config(config), progress=False)  # same host, dead pid: taken over at once
    return config, left[0]


def test_a_killed_worker_is_recovered_by_the_next_run(killed_then_recovered):
    config, orphan = killed_then_recovered
    cells = [cell.cell_id for cell in load_config(config).cells()]
    done = rows(config)
    assert sorted(done) == sorted(cells) and all(r["status"] == "ok" for r in done.values())
    assert done[orphan]["n"] == 4 and done[orphan]["world_size"] == 1 and done[orphan]["device"] == "cpu"
    assert not list((load_config(config).results_dir / "claims").glob("*.claim*"))
    samples = load_config(config).results_dir / "runs" / orphan / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == 4


def test_two_workers_run_every_cell_once_with_the_same_rows(killed_then_recovered, tiny_checkpoint, tmp_path):
    reference, _ = killed_then_recovered
    config = sweep_config(tmp_path, tiny_checkpoint, "pair")
    workers = [start_worker(config) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [line.split(" ran ")[1].split()[0] for _, err in outputs for line in err.splitlines() if " ran " in line]
    cells = [cell.cell_id for cell in load_config(config).cells()]
    assert sorted(ran) == sorted(cells)  # every cell exactly once across the two workers
    assert {comparable(r)["cell_id"] for r in rows(config).values()} == set(cells)
    expected = {cid: comparable(r) for cid, r in rows(reference).items()}
    assert {cid: comparable(r) for cid, r in rows(config).items()} == expected
    table = (load_config(config).results_dir / "leaderboard.csv").read_text().splitlines()
    assert len(table) == 1 + len(cells)  # the report left behind holds every row


def test_slurm_submission_path(killed_then_recovered):
    from tokbench.harness.slurm import parse_spec, sbatch_script, submit_workers

    config, _ = killed_then_recovered
    assert parse_spec("partition=gpu,gpus_per_task=1,array=3,timeout_min=90") == (
        3, {"slurm_partition": "gpu", "slurm_gpus_per_task": 1, "timeout_min": 90}
    )  # fmt: skip
    script = sbatch_script(str(config), "partition=gpu,gpus_per_task=1,array=3,timeout_min=90")
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --time=90"):
        assert line in script
    with pytest.raises(ValueError, match="partitionx"):
        sbatch_script(str(config), "partitionx=gpu")
    # submitit's debug executor runs the array's workers here: on a finished sweep they only report
    jobs = submit_workers(str(config), "partition=gpu,array=2", cluster="debug")
    assert [job.result() for job in jobs] == [3, 3]


def test_a_data_parallel_sweep_cell_gives_the_single_process_row(killed_then_recovered, tiny_checkpoint, tmp_path):
    """``torchrun --nproc_per_node 2 -m tokbench.harness.cli sweep``: each cell's samples split over two ranks."""
    reference, _ = killed_then_recovered
    fastv = {"method": "fastv", "params": {"K": 1}, "budgets": [{"retain": 0.5}]}  # an in-LLM method: layer counts gathered too
    config = sweep_config(tmp_path, tiny_checkpoint, "dp", methods=[fastv])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tokbench.harness.cli", "sweep", str(config), "--quiet"]
    done = subprocess.run(command, check=False, env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got, expected = rows(config), rows(reference)
    assert len(got) == 2
    for cell_id, row in got.items():
        assert row["world_size"] == 2 and row["status"] == "ok"
        assert without(comparable(row), {"world_size"}) == without(comparable(expected[cell_id]), {"world_size"})
        assert samples_by_doc(config, cell_id) == samples_by_doc(reference, cell_id)
