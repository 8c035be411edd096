"""Built-in token-reduction methods. Importing this package registers every one of them.

Each method lives in its own module; see ``methods/base.py`` for the interface and
``methods/registry.py`` for lookup and third-party entry points.
"""

from importlib import import_module

BUILTIN_MODULES = (
    "methods.full",
    "methods.uniform_pool",
    "methods.fastv",
    "methods.divprune",
    "methods.holitom",
    "methods.vqtoken",
)

for _module in BUILTIN_MODULES:
    import_module(_module)
