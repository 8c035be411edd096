"""The embedded default model: where it lives and how to make it when it is missing.

``python -m harness.models.default`` writes the small LLaVA-OneVision used by
``./run_all.sh`` with no arguments to ``.cache/models/tiny-llava-ov`` (seeded, offline). Until a
trained checkpoint is committed (the embedded-default issue), its weights are random, so its
answers are at chance: the leaderboard then shows the pipeline and the accounting, not a
ranking of methods.
"""

from __future__ import annotations

from pathlib import Path

from harness.models.tiny import TinySpec, build_tiny_llava_onevision

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "tiny-llava-ov"


def ensure_default_model(path: Path = DEFAULT_DIR) -> Path:
    if (path / "config.json").is_file():
        return path
    return build_tiny_llava_onevision(path, TinySpec())


if __name__ == "__main__":
    print(ensure_default_model())
