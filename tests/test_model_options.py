"""A model family's own adapter options (LLaVA-Video's llava_vid settings) through the lmms-eval
model args and a sweep config, parsed from text, refused for a family that does not take them."""

from __future__ import annotations

import pytest

from tokbench.harness.config import parse_config
from tokbench.harness.models import parse_options


def test_llava_vid_options_through_the_lmms_eval_model_args(tiny_checkpoint):
    from tokbench.harness.lmms_plugin import TokbenchLMM
    from tokbench.harness.models.llava_onevision import LlavaVideoAdapter

    lm = TokbenchLMM(
        pretrained=tiny_checkpoint, method="divprune", retain="0.5", device="cpu",
        geometry="llava_vid", add_time_instruction="true", force_sample="false", video_fps="2",
    )
    assert isinstance(lm.adapter, LlavaVideoAdapter)
    assert (lm.adapter.add_time_instruction, lm.adapter.force_sample, lm.adapter.video_fps) == (True, False, 2)
    assert lm.reducer.name == "divprune" and lm.adapter.geometry_name == "llava_vid"


def test_options_a_family_does_not_take_are_refused():
    with pytest.raises(ValueError, match="'add_time_instruction' is not for qwen2_5_vl checkpoints"):
        parse_options("qwen2_5_vl", {"add_time_instruction": "true"})
    with pytest.raises(ValueError, match="is not a boolean"):
        parse_options("llava_onevision", {"force_sample": "maybe"})
    with pytest.raises(ValueError, match="only for the llava_vid geometry"):
        from tokbench.harness.models.llava_onevision import open_llava_adapter

        open_llava_adapter("unused", geometry="llava_onevision", add_time_instruction=True)


def test_sweep_models_take_options_and_they_name_their_cells(tmp_path):
    raw = {
        "name": "opts", "tasks": ["synthvqa"], "methods": [{"method": "full"}],
        "models": [
            {"name": "ov", "pretrained": "some/model"},
            {"name": "vid", "pretrained": "some/model", "options": {"add_time_instruction": True}},
        ],
    }
    config = parse_config(raw, tmp_path)
    plain, timed = config.models
    assert plain.options == () and timed.options == (("add_time_instruction", True),)
    ids = {cell.model.name: cell.cell_id for cell in config.cells()}
    assert ids["ov"].split("__")[-1] != ids["vid"].split("__")[-1]
