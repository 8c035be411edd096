"""Method registry: name -> Reducer subclass, built-ins plus third-party entry points.

Built-in methods register with ``@register`` when their module is imported (``methods/__init__``
imports them all). Third-party packages add methods through the ``tokbench.methods``
entry-point group; each entry point names a Reducer subclass (or a module whose import
registers one).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from tokbench.methods.base import Budget, MethodError, Reducer

ENTRY_POINT_GROUP = "tokbench.methods"

_REGISTRY: dict[str, type[Reducer]] = {}
_entry_points_loaded = False


class UnknownMethodError(MethodError):
    """A method name that is not registered."""


def register(name: str):
    """Class decorator: register a Reducer subclass under ``name``."""

    def wrap(cls: type[Reducer]) -> type[Reducer]:
        if not (isinstance(cls, type) and issubclass(cls, Reducer)):
            raise TypeError(f"@register({name!r}) expects a Reducer subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MethodError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if isinstance(loaded, type) and issubclass(loaded, Reducer) and loaded.name not in _REGISTRY:
            register(ep.name)(loaded)


def available() -> dict[str, type[Reducer]]:
    """All registered methods, sorted by name."""
    import tokbench.methods  # noqa: F401  (imports the built-in method modules)

    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Reducer]:
    known = available()
    if name not in known:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(known)}")
    return known[name]


def build_reducer(name: str, params: dict[str, Any] | None = None) -> Reducer:
    """Instantiate a method from string or typed parameters (budget keys included)."""
    params = dict(params or {})
    cls = get_method(name)
    retain = params.pop("retain", None)
    tokens = params.pop("tokens", None)
    policy = params.pop("positions", None)
    try:
        budget = Budget(
            retain=None if retain is None else float(retain),
            tokens=None if tokens is None else int(tokens),
        )
    except ValueError as exc:
        if isinstance(exc, MethodError):
            raise
        raise MethodError(f"bad budget for {name!r}: {exc}") from None
    return cls(budget=budget, position_policy=policy, **params)
