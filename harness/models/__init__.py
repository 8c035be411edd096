"""Model families behind one protocol (``protocol.ModelAdapter``), chosen by the checkpoint's config.

``load_adapter(pretrained)`` reads the checkpoint's ``config.json`` (local folder or hub id)
and picks the adapter ``ADAPTERS`` lists for its ``model_type``, so ``pretrained=``
alone selects the family. Adding a family: one adapter file, one line in ``ADAPTERS`` (and its
options, if it takes any, in ``OPTIONS``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# model_type (config.json) -> "module:class" of its adapter, imported only when used
ADAPTERS = {
    "llava_onevision": "tokbench.harness.models.llava_onevision:open_llava_adapter",
    "qwen2_5_vl": "tokbench.harness.models.qwen2_5_vl:Qwen2_5_VLAdapter",
}


# model_type -> the options its adapter takes besides device, dtype and attention kernel (lmms-eval
# model_args, a sweep model's ``options:``), with their types: llava_vid's own settings
# (docs/models.md); values given as text ("true", "2") are parsed.
OPTIONS: dict[str, dict[str, type]] = {
    "llava_onevision": {"geometry": str, "add_time_instruction": bool, "video_fps": int, "force_sample": bool},
    "qwen2_5_vl": {},
}
OPTION_NAMES = frozenset(name for options in OPTIONS.values() for name in options)


def parse_options(model_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """Typed adapter options for a family; an option the family does not take is a ValueError."""
    allowed = OPTIONS.get(model_type, {})
    parsed = {}
    for name, raw in options.items():
        if name not in allowed:
            raise ValueError(f"model option {name!r} is not for {model_type} checkpoints (they take: {', '.join(allowed) or 'none'})")
        parsed[name] = _parse(name, raw, allowed[name])
    return parsed


def _parse(name: str, raw: Any, kind: type) -> Any:
    if not isinstance(raw, str) or kind is str:
        return raw
    text = raw.strip().lower()
    if kind is bool:
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"model option {name}={raw!r} is not a boolean")
        return text in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"model option {name}={raw!r} is not {kind.__name__}") from None


def model_type_of(pretrained: str) -> str:
    """The ``model_type`` in a checkpoint's config (a ValueError if there is none to read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(pretrained))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load model {str(pretrained)!r}: {exc}") from None
    return str(config.model_type)


def adapter_class(model_type: str):
    if model_type not in ADAPTERS:
        raise ValueError(f"no tokbench adapter for model_type {model_type!r} (supported: {', '.join(ADAPTERS)})")
    module, name = ADAPTERS[model_type].split(":")
    return getattr(import_module(module), name)


def load_adapter(pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa", **options: Any):
    """Load a checkpoint with the adapter of its family (chosen from its config's ``model_type``),
    with the family's own ``options`` (``OPTIONS``)."""
    model_type = model_type_of(pretrained)
    cls = adapter_class(model_type)
    return cls(str(pretrained), device=device, dtype=dtype, attn_implementation=attn_implementation, **parse_options(model_type, options))
