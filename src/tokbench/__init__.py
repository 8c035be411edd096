"""tokbench: a benchmark harness for visual-token reduction methods in video LLMs.

The installed distribution has this one import name. Its parts live in the repository's
top-level folders and are mapped under it (pyproject.toml, ``[tool.setuptools.package-dir]``):

* ``tokbench.methods`` (``methods/``): the reduction methods, their registry and the seam types;
* ``tokbench.harness`` (``harness/``): model adapters, engine, runner, lmms-eval plugin, sweep,
  report, FLOPs, CLI;
* ``tokbench.tasks`` (``tasks/``): lmms-eval tasks lmms-eval does not ship (SynthVQA).
"""
