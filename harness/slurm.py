"""Submit sweep workers as a SLURM job array through submitit (no scheduler of ours).

``tokbench sweep CONFIG --slurm partition=gpu,gpus_per_task=1,array=8`` submits 8 array
tasks; each runs ``run_sweep`` on the same results folder, and the cell claims of
``tokbench.harness.claims`` make them share the cells (each cell runs once). The spec is
``KEY=VALUE`` pairs: ``array`` is the number of workers; submitit's shared parameters
(``timeout_min``, ``mem_gb``, ``cpus_per_task``, ``gpus_per_node``, ``nodes``,
``tasks_per_node``, ``name``) pass as they are; anything else is a SLURM parameter of
submitit's ``SlurmExecutor`` (``partition``, ``gpus_per_task``, ``account``, ``qos``,
``constraint``, ``time``, ``array_parallelism``, ...), given with or without a ``slurm_`` prefix.
Logs and pickles go to ``<results>/slurm/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokbench.harness.claims import DEFAULT_STALE_AFTER_S


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str) -> tuple[int, dict[str, Any]]:
    """``'partition=gpu,gpus_per_task=1,array=4'`` -> (4 workers, submitit AutoExecutor parameters)."""
    from submitit import AutoExecutor

    generic = AutoExecutor._typed_parameters()
    workers, params = 1, {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in pair:
            raise ValueError(f"--slurm {pair!r} must be KEY=VALUE")
        key, text = (s.strip() for s in pair.split("=", 1))
        if key == "array":
            workers = int(text)
            if workers < 1:
                raise ValueError(f"--slurm array={text}: need at least one worker")
        elif key in generic:
            params[key] = generic[key](_value(text)) if generic[key] is not bool else bool(_value(text))
        else:
            params[key if key.startswith("slurm_") else f"slurm_{key}"] = _value(text)
    return workers, params


def make_executor(folder: Path, params: dict[str, Any], workers: int, cluster: str = "slurm", dry_run: bool = False):
    """A submitit executor with ``params``; one-line ValueErrors for unknown keys or no SLURM here.

    ``dry_run`` builds the SLURM executor where ``srun`` is absent, to show its sbatch script.
    """
    from submitit import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor

    class OffClusterSlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    try:
        if dry_run:
            executor = AutoExecutor(folder=folder, cluster="debug")
            executor.cluster, executor._executor = "slurm", OffClusterSlurmExecutor(folder)
        else:
            executor = AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:
        raise ValueError(f"--slurm: {exc} (--dry-run shows the sbatch script; --submitit-cluster local runs the workers here)") from None
    try:
        executor.update_parameters(**{"slurm_array_parallelism": workers, **params})
    except NameError as exc:  # submitit lists every valid key over many lines
        raise ValueError(f"--slurm: {str(exc).splitlines()[0]}") from None
    return executor


def sbatch_script(config_path: str, spec: str) -> str:
    """The sbatch file submitit would submit for ``spec`` (what ``--dry-run`` prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from tokbench.harness.config import load_config

    workers, params = parse_spec(spec)
    config = load_config(config_path)
    params.setdefault("name", f"tokbench-{config.name}")
    executor = make_executor(config.results_dir.resolve() / "slurm", params, workers, dry_run=True)
    parameters = {**executor._executor.parameters, "map_count": workers}
    folder = executor._executor.folder
    return _make_sbatch_string(command=f"{executor._executor.python} -u -m submitit.core._submit {folder}", folder=folder, **parameters)


def submit_workers(config_path: str, spec: str, stale_after_s: float = DEFAULT_STALE_AFTER_S, cluster: str = "slurm") -> list:
    """Submit the array of sweep workers; returns submitit jobs (``cluster='local'`` runs them here)."""
    from tokbench.harness.config import load_config

    config_path = str(Path(config_path).resolve())
    workers, params = parse_spec(spec)
    config = load_config(config_path)
    params.setdefault("name", f"tokbench-{config.name}")
    executor = make_executor(config.results_dir.resolve() / "slurm", params, workers, cluster)
    return executor.map_array(sweep_worker, [config_path] * workers, [stale_after_s] * workers)


def sweep_worker(config_path: str, stale_after_s: float) -> int:
    """One array task: run the sweep's cells with the others; returns the number of rows."""
    from tokbench.harness.config import load_config
    from tokbench.harness.sweep import run_sweep

    return len(run_sweep(load_config(config_path), progress=False, stale_after_s=stale_after_s))
