"""The embedded default model: the small LLaVA-OneVision trained on SynthVQA, committed in the repo.

``checkpoints/tiny-llava-ov-synthvqa`` is what ``./run_all.sh`` with no arguments evaluates
(``configs/synthvqa.yaml``) and what the benchmarks time. It was written by
``python -m embedded.train_tiny`` (its model card, ``README.md`` there, gives the command, seed,
time and accuracy).

The folder is found relative to the repository: ``embedded/`` is not installed (it is not in
pyproject's packages), so this file always sits in a source checkout, one level below the
repository root that holds ``checkpoints/``. Code that runs from an installed tokbench names a
checkpoint folder itself (a sweep config's ``pretrained``, ``--model``).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "checkpoints" / "tiny-llava-ov-synthvqa"


def default_model(path: Path = DEFAULT_DIR) -> Path:
    """The committed checkpoint's folder; a clear error if it is missing (e.g. a partial clone)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: the embedded default checkpoint is committed in the repo; "
            "restore it with `git checkout -- checkpoints/` or retrain it with `python -m embedded.train_tiny --out "
            f"{path}`"
        )
    return path


if __name__ == "__main__":
    print(default_model())
