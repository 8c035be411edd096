"""Sweep configuration: a YAML file -> validated ``SweepConfig`` -> the list of ``Cell``s to run.

A typo'd key is an error naming the key and the keys allowed there; so is a task the harness
cannot score (``check_tasks``, run by ``load_config`` and before a sweep's first cell). Cells
are expanded as models x tasks x (methods x budgets), with the ``full`` baseline first for
every model and task (it is added if the config omits it: every delta is against it). A method entry with
``models: [name, ...]`` runs on those models only (e.g. a method that needs its own fine-tuned
checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokbench.harness.scoring import unsupported_reason


class ConfigError(ValueError):
    """A sweep configuration that cannot be run as written."""


TOP_KEYS = {
    "name": "leaderboard name: rows go to <output_dir>/<name>/",
    "output_dir": "where results go (default: results)",
    "models": "list of {name, pretrained, options}",
    "tasks": "lmms-eval task names",
    "include_path": "extra lmms-eval task folders (default: the repo's tasks/)",
    "frames": "frames sampled per video (max_frames_num)",
    "limit": "samples per task (null = all)",
    "seed": "random seed",
    "device": "auto, cpu or cuda[:N]",
    "dtype": "auto, float32, bfloat16 or float16",
    "max_new_tokens": "cap on generated tokens per answer",
    "flops_samples": "samples per cell whose prefill fvcore measures (0 = none)",
    "methods": "list of {method, params, budgets, models}",
    "judge_url": "OpenAI-compatible chat endpoint for judged tasks (activitynetqa); default $OPENAI_API_URL",
}
MODEL_KEYS = {"name", "pretrained", "options"}
METHOD_KEYS = {"method", "params", "budgets", "models"}
BUDGET_KEYS = {"retain", "tokens"}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    pretrained: str
    options: tuple[tuple[str, Any], ...] = ()  # the family's adapter options (e.g. llava_vid's add_time_instruction)


@dataclass(frozen=True)
class Cell:
    """One leaderboard row to produce: a method at a budget on a model and task."""

    model: ModelEntry
    task: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    budget: tuple[tuple[str, Any], ...] = ()

    @property
    def method_params(self) -> dict[str, Any]:
        return {**dict(self.params), **dict(self.budget)}

    @property
    def budget_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.budget) or "all"

    @property
    def params_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def cell_id(self) -> str:
        model = [self.model.name, self.model.pretrained] + ([list(self.model.options)] if self.model.options else [])
        key = json.dumps([*model, self.task, self.method, self.params, self.budget], default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return f"{self.model.name}__{self.task}__{self.method}__{digest}"


@dataclass
class SweepConfig:
    name: str
    models: list[ModelEntry]
    tasks: list[str]
    methods: list[dict[str, Any]]
    output_dir: str = "results"
    include_path: list[str] = field(default_factory=list)
    frames: int = 32
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int | None = None
    flops_samples: int = 1
    judge_url: str | None = None

    @property
    def results_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def cells(self) -> list[Cell]:
        cells: list[Cell] = []
        for model in self.models:
            for task in self.tasks:
                cells.append(Cell(model, task, "full"))
                for entry in self.methods:
                    if entry["method"] == "full" or model.name not in entry.get("models", [model.name]):
                        continue
                    params = tuple(sorted((k, v) for k, v in (entry.get("params") or {}).items()))
                    for budget in entry.get("budgets") or [{}]:
                        cells.append(Cell(model, task, entry["method"], params, tuple(sorted(budget.items()))))
        return cells


def _check_keys(where: str, given: dict, allowed) -> None:
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})")


def parse_config(raw: dict[str, Any], base_dir: Path) -> SweepConfig:
    """Validate a loaded YAML mapping; relative paths resolve against ``base_dir``."""
    _check_keys("the config", raw, TOP_KEYS)
    for required in ("name", "models", "tasks", "methods"):
        if required not in raw:
            raise ConfigError(f"the config needs {required!r} ({TOP_KEYS[required]})")
    models = []
    for index, entry in enumerate(raw["models"]):
        _check_keys(f"models[{index}]", entry, MODEL_KEYS)
        pretrained = str(entry["pretrained"])
        local = base_dir / pretrained
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"models[{index}].options must be a mapping of adapter options")
        name = str(entry.get("name", pretrained))
        models.append(ModelEntry(name, str(local) if local.exists() else pretrained, tuple(sorted(options.items()))))
    methods = []
    for index, entry in enumerate(raw["methods"]):
        _check_keys(f"methods[{index}]", entry, METHOD_KEYS)
        if "method" not in entry:
            raise ConfigError(f"methods[{index}] needs a 'method' name")
        names = {m.name for m in models}
        unknown = [name for name in entry.get("models", []) if name not in names]
        if unknown:
            raise ConfigError(f"methods[{index}].models names {unknown[0]!r}, not a model of this config")
        for b_index, budget in enumerate(entry.get("budgets") or []):
            _check_keys(f"methods[{index}].budgets[{b_index}]", budget, BUDGET_KEYS)
        methods.append(entry)
    include = raw.get("include_path", [str(Path(__file__).resolve().parents[1] / "tasks")])
    include = [include] if isinstance(include, str) else list(include)
    return SweepConfig(
        name=str(raw["name"]),
        models=models,
        tasks=[str(t) for t in raw["tasks"]],
        methods=methods,
        output_dir=str(raw.get("output_dir", "results")),
        include_path=[str(base_dir / p) if (base_dir / p).exists() else p for p in include],
        frames=int(raw.get("frames", 32)),
        limit=raw.get("limit"),
        seed=int(raw.get("seed", 0)),
        device=str(raw.get("device", "auto")),
        dtype=str(raw.get("dtype", "auto")),
        max_new_tokens=raw.get("max_new_tokens"),
        flops_samples=int(raw.get("flops_samples", 1)),
        judge_url=raw.get("judge_url"),
    )


def check_tasks(config: SweepConfig) -> None:
    """Refuse, before any compute, a task the harness cannot score (naming it and why)."""
    for task in config.tasks:
        reason = unsupported_reason(task)
        if reason:
            raise ConfigError(reason)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    config = parse_config(raw, path.resolve().parent)
    check_tasks(config)
    return config
