"""Model families behind one protocol (``protocol.ModelAdapter``), chosen by the checkpoint's config.

``load_adapter(pretrained)`` reads the checkpoint's ``config.json`` (local folder or hub id)
and picks the adapter ``ADAPTERS`` lists for its ``model_type``, so ``pretrained=``
alone selects the family. Adding a family: one adapter file, one line in ``ADAPTERS``.
"""

from __future__ import annotations

from importlib import import_module

# model_type (config.json) -> "module:class" of its adapter, imported only when used
ADAPTERS = {
    "llava_onevision": "tokbench.harness.models.llava_onevision:open_llava_adapter",
    "qwen2_5_vl": "tokbench.harness.models.qwen2_5_vl:Qwen2_5_VLAdapter",
}


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


def load_adapter(pretrained: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa"):
    """Load a checkpoint with the adapter of its family (chosen from its config's ``model_type``)."""
    cls = adapter_class(model_type_of(pretrained))
    return cls(str(pretrained), device=device, dtype=dtype, attn_implementation=attn_implementation)
