"""Built-in token-reduction methods. Importing this package registers every one of them.

Each method lives in its own module; see ``methods/base.py`` for the interface and
``methods/registry.py`` for lookup and third-party entry points.
"""

from importlib import import_module

BUILTIN_MODULES = (
    "tokbench.methods.full",
    "tokbench.methods.uniform_pool",
    "tokbench.methods.fastv",
    "tokbench.methods.divprune",
    "tokbench.methods.holitom",
    "tokbench.methods.vqtoken",
)

for _module in BUILTIN_MODULES:
    import_module(_module)
