"""The entry-point payload that registers the lmms-eval model ``tokbench`` (group ``lmms_eval.models``).

lmms-eval 0.7 reads only its V2 registry, which it fills from this entry point while
``lmms_eval.models`` is first imported. The payload names the model class by its path and imports
nothing of tokbench or lmms-eval at module level, so whichever is imported first (lmms-eval's CLI,
or ``tokbench.harness.lmms_plugin`` in a program), the registration is complete: were the
payload in the plugin module itself, importing the plugin first would make lmms-eval read a
half-imported module and leave ``tokbench`` out of its registry.
"""

from __future__ import annotations

MODEL_ID = "tokbench"
MODEL_CLASS = "tokbench.harness.lmms_plugin.TokbenchLMM"


def manifest():
    """``ModelManifest`` of the simple (non-chat) model class ``TokbenchLMM``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
