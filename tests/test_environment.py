"""The installed environment is the locked one: every package of requirements.lock at its
pinned version, and the lock satisfies every direct dependency pyproject.toml declares; and the
distribution installs one top-level import name, ``tokbench``.

A drift (a package upgraded by hand, a lock not refreshed after a pyproject change) fails here
instead of changing results silently. Refresh with ``scripts/lock.sh``.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"requirements.lock line {line!r} is not name==version"
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_locked_package_is_installed_at_its_version():
    wrong = {}
    for name, pinned in locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            wrong[name] = f"locked {pinned}, installed {installed}"
    assert not wrong, f"environment differs from requirements.lock (run scripts/setup.sh): {wrong}"


def test_the_lock_satisfies_pyproject():
    pins = locked()
    unmet = [str(r) for r in declared() if canonicalize_name(r.name) not in pins or pins[canonicalize_name(r.name)] not in r.specifier]
    assert not unmet, f"requirements.lock does not satisfy {unmet}: refresh it with scripts/lock.sh"


def test_the_distribution_has_one_top_level_import_name(tmp_path):
    """``pip install .`` puts only ``tokbench`` into site-packages; the folders map under it.

    The wheel is built from a copy of the sources, so the build leaves no ``tokbench.egg-info``
    in the repository (one there would shadow the installed package's metadata)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("src", "harness", "methods", "tasks"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("tokbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"tokbench"}
    for module in ("tokbench/harness/cli.py", "tokbench/methods/registry.py", "tokbench/tasks/synthvqa/synthvqa.yaml"):
        assert module in names
