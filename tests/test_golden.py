"""Golden conformance: every file of a golden directory checked against our implementation.

The directory is ``tests/data/golden`` by default: one file of every kind (method and function)
of the public set made by running the official code (``../shared/golden/public``, not shipped with
a clone). ``$TOKBENCH_GOLDEN_DIR`` selects another set (``.ci/run`` points it at the full public
set when ``../shared`` exists, and a held-out set works the same way). Each
``<method>_<function>_<case>.pt`` file is dispatched on its ``<method>_<function>`` prefix to
a checker in ``tests/golden_checks/``; a file no checker knows FAILS (so a held-out set with
new kinds of files cannot pass silently). Tolerances follow ../shared/golden/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.golden_checks import CHECKERS

DEFAULT_DIR = Path(__file__).resolve().parent / "data" / "golden"


def golden_dir() -> Path:
    return Path(os.environ.get("TOKBENCH_GOLDEN_DIR", DEFAULT_DIR))


def golden_files() -> list[Path]:
    directory = golden_dir()
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.pt"))


def prefix_of(path: Path) -> str:
    method, function = path.stem.split("_")[:2]
    return f"{method}_{function}"


def test_golden_directory_is_present():
    assert golden_files(), f"no golden files found in {golden_dir()} (set TOKBENCH_GOLDEN_DIR)"


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.name)
def test_golden_file(path: Path):
    prefix = prefix_of(path)
    checker = CHECKERS.get(prefix)
    if checker is None:
        pytest.fail(f"no checker for golden files of kind {prefix!r} ({path.name})")
    record = torch.load(path, weights_only=True)
    checker(record)
