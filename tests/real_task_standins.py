"""Stand-ins for lmms-eval's real video tasks: rows of each task's exact dataset schema, put where
the task's loader finds them offline, and small generated videos in lmms-eval's layout under a
test $HF_HOME; plus a local stand-in for ActivityNet-QA's LLM judge.

Rows go into the datasets cache as the Hub dataset's cached copy (``<cache>/<ns>___<name>/
<config>/0.0.0/<hash>/``), which ``datasets.load_dataset(<hub id>)`` reads when offline, so each
task's installed YAML and utils.py run unchanged. Every task gets one row whose video is absent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import write_video


@dataclass
class Standin:
    repo: str  # the task's dataset_path
    config: str  # its dataset_name ("default" when none)
    split: str
    rows: list[dict[str, Any]]
    videos: list[str]  # paths under $HF_HOME to write as mp4 videos (others absent)
    frame_folders: list[str] = field(default_factory=list)  # paths under $HF_HOME to write as frame folders


def _videomme_row(i: int) -> dict[str, Any]:
    return {
        "video_id": f"{i:03d}", "duration": ["short", "medium", "long"][i % 3], "domain": "Knowledge",
        "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v=vid{i}", "videoID": f"vid{i}",
        "question_id": f"{i:03d}-1", "task_type": ["Counting Problem", "Action Recognition"][i % 2],
        "question": "How many cups are on the table?", "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "ABCD"[i % 4],
    }


def _mvbench_row(i: int, video: str) -> dict[str, Any]:
    return {"video": video, "question": "What happens in the video?", "candidates": ["opening a door", "closing a door", "sitting"], "answer": ["opening a door", "closing a door", "sitting"][i % 3]}


def _egoschema_row(i: int) -> dict[str, Any]:
    return {
        "question_idx": f"q{i}", "question": "What is the overall goal of C in the video?", "video_idx": f"ego{i}",
        "option": [f"{letter}. option {letter}" for letter in "ABCDE"], "answer": str(i % 5),
    }


def _longvideobench_row(i: int) -> dict[str, Any]:
    options = ["a red car", "a blue car", "a bicycle", "N/A", "N/A"]
    return {
        "video_id": f"lvb{i}", "question": "Which vehicle appears first?", "question_wo_referring_query": "Which vehicle appears first?",
        "candidates": options[:3], "correct_choice": i % 3, "position": [1], "topic_category": "NP-News-Programs",
        "question_category": "E2O", "level": "L1-Perception", "id": f"lvb{i}_0", "video_path": f"lvb{i}.mp4",
        "subtitle_path": f"lvb{i}_en.json", "duration_group": [15, 60, 600][i % 3], "starting_timestamp_for_subtitles": 0.0,
        "duration": 12.0, "view_count": 100, **{f"option{k}": options[k] for k in range(5)},
    }


def _nextqa_row(i: int) -> dict[str, Any]:
    return {
        "video": 4000 + i, "frame_count": 4, "width": 32, "height": 32, "question": "why did the boy pick up the ball",
        "answer": i % 5, "qid": i, "type": ["CW", "TN", "DC"][i % 3], **{f"a{k}": f"answer {k}" for k in range(5)},
    }


def _mlvu_row(i: int) -> dict[str, Any]:
    return {
        "video_name": f"{i}_plotQA.mp4", "duration": 12.0, "question": "What happened first?\n(A) a\n(B) b\n(C) c\n(D) d",
        "candidates": ["a", "b", "c", "d"], "answer": "ABCD"[i % 4], "question_type": "plotQA",
        "task_type": ["plotQA", "count", "order"][i % 3],
    }


def _activitynetqa_row(i: int) -> dict[str, Any]:
    return {"video_name": f"anet{i}", "question_id": f"v_anet{i}_0", "question": "is the person indoors", "answer": ["yes", "no"][i % 2], "type": i % 3}


def standins(rows: int = 3) -> dict[str, Standin]:
    """Per task: ``rows`` rows, the last one's video absent (MVBench: per subtask, see ``mvbench_standins``)."""
    present = range(rows - 1)
    return {
        "videomme": Standin("lmms-eval/Video-MME", "default", "test", [_videomme_row(i) for i in range(rows)],
                            [f"videomme/data/vid{i}.mp4" for i in present]),
        "egoschema_subset": Standin("lmms-eval/egoschema", "Subset", "test", [_egoschema_row(i) for i in range(rows)],
                                    [f"egoschema/videos/ego{i}.mp4" for i in present]),
        "longvideobench_val_v": Standin("longvideobench/LongVideoBench", "default", "validation", [_longvideobench_row(i) for i in range(rows)],
                                        [f"datasets/longvideobench/videos/lvb{i}.mp4" for i in present]),
        "nextqa_mc_test": Standin("lmms-eval/NExTQA", "MC", "test", [_nextqa_row(i) for i in range(rows)],
                                  [f"nextqa/NExTVideo/{4000 + i}.mp4" for i in present]),
        "mlvu_dev": Standin("sy1998/MLVU_dev", "default", "test", [_mlvu_row(i) for i in range(rows)],
                            [f"mlvu/{i}_plotQA.mp4" for i in present]),
        "activitynetqa": Standin("lmms-eval/ActivityNetQA", "default", "test", [_activitynetqa_row(i) for i in range(rows)],
                                 [f"activitynetqa/all_test/v_anet{i}.mp4" for i in present]),
    }


def mvbench_standins(subtasks: tuple[str, ...]) -> dict[str, Standin]:
    """One row per MVBench subtask (in the subtask's own video folder); action_antonym gets a second row whose
    video is absent; episodic_reasoning's video is a folder of frames, as MVBench ships it."""
    from lmms_eval.tasks.mvbench.utils import DATA_LIST  # each subtask's video folder

    out = {}
    for name in subtasks:
        folder = DATA_LIST[name]
        rows = [_mvbench_row(0, f"{name}0.mp4")]
        if name == "action_antonym":
            rows.append(_mvbench_row(1, f"{name}_missing.mp4"))
        path = f"mvbench_video/{folder}/{name}0.mp4"
        is_folder = name == "episodic_reasoning"
        out[f"mvbench_{name}"] = Standin("OpenGVLab/MVBench", name, "train", rows, [] if is_folder else [path], [path] if is_folder else [])
    return out


def put_rows(datasets_cache: Path, standin: Standin) -> None:
    """Write rows as the offline cached copy of ``standin.repo`` / ``standin.config``."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.json.json import Json

    namespace, name = standin.repo.split("/")
    snake = camelcase_to_snakecase(name)
    target = datasets_cache / f"{namespace}___{snake}" / standin.config / "0.0.0" / "standin"
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(row) + "\n" for row in standin.rows))
        builder = Json(cache_dir=str(Path(tmp) / "cache"), data_files={standin.split: str(rows_file)}, dataset_name=snake)
        builder.download_and_prepare()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(builder.cache_dir, target)
    info = json.loads((target / "dataset_info.json").read_text())
    info["config_name"] = standin.config
    (target / "dataset_info.json").write_text(json.dumps(info))


def build_home(home: Path, tasks: dict[str, Standin], frames: int = 4) -> None:
    """Videos (and frame folders) under ``home`` and every task's rows in ``home/datasets``."""
    rng = np.random.default_rng(0)
    for standin in tasks.values():
        for relative in standin.videos:
            (home / relative).parent.mkdir(parents=True, exist_ok=True)
            write_video(home / relative, rng.integers(0, 255, size=(frames, 32, 32, 3), dtype=np.uint8))
        for relative in standin.frame_folders:
            from PIL import Image

            (home / relative).mkdir(parents=True, exist_ok=True)
            for k in range(frames + 2):
                Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(home / relative / f"{k + 1:05d}.jpg")
        put_rows(home / "datasets", standin)


class _JudgeHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that judges "yes" (score 5) when the predicted answer
    equals the correct one (case-insensitive), else "no" (score 1)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        fields = dict(line.split(": ", 1) for line in text.splitlines() if line.startswith(("Correct Answer: ", "Predicted Answer: ")))
        same = fields.get("Correct Answer", "").strip().lower() == fields.get("Predicted Answer", "").strip().lower()
        content = "{'pred': 'yes', 'score': 5}" if same else "{'pred': 'no', 'score': 1}"
        reply = json.dumps({"model": body.get("model"), "choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


class StubJudge:
    """The stand-in judge on 127.0.0.1 (a free port), served from a thread while in a ``with``."""

    def __enter__(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def refused_url() -> str:
    """A 127.0.0.1 URL nothing listens on (a port bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/chat/completions"
