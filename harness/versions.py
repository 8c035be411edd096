"""Versions of what produced a row (written into every row's ``versions`` column)."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("tokbench", "torch", "transformers", "lmms_eval")


@lru_cache(maxsize=1)
def versions() -> str:
    parts = []
    for package in PACKAGES:
        try:
            parts.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}=?")
    return " ".join(parts)
