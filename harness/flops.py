"""FLOPs, two ways, never mixed.

* Paper convention (FastV, DivPrune, HoliTom): per decoder layer ``4nd^2 + 2n^2d + 2ndm`` with
  n = visual tokens (grid tokens, newline and text excluded, as HoliTom counts), d = hidden
  size, m = FFN size, summed over a method's token schedule (stages of layers with their
  token counts). ``paper_flops`` needs no weights: model dimensions are built in or read
  from a config.json. Tokens per frame come from the model's video geometry
  (``harness/models/geometry.py``): LLaVA-OV 196 (14x14 bilinear) plus one newline per video;
  LLaVA-Video as lmms-eval's ``llava_vid`` runs it 169 (13x13 average) plus 13 row newlines per
  frame. The newlines are reported (``newline_tokens``, ``visual_tokens_fed``,
  ``paper_tflops_full_fed``) but, as in the papers, not counted in ``n``.
* Measured: fvcore's ``FlopCountAnalysis`` traced over the actual prefill of one sample
  (vision tower, projector, reducer, LLM), with an op handle so that
  ``aten::scaled_dot_product_attention`` is counted (fvcore skips it by default). fvcore
  counts one fused multiply-add as one FLOP, the same unit as the paper formula; it counts
  the real architecture (GQA's smaller k/v, SwiGLU's three FFN matrices, text tokens), so
  the two numbers differ by design.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokbench.harness.models.geometry import GEOMETRIES, LLAVA_ONEVISION, LLAVA_VID, VideoGeometry, detect_geometry
from tokbench.methods.base import Reducer

SIGLIP_SIDE = 27
"""Patches per side of the SigLIP-so400m 384/14 tower every LLaVA-OV / LLaVA-Video uses."""


@dataclass(frozen=True)
class ModelDims:
    """What the paper formula needs: LLM depth and widths, and visual tokens per frame.

    ``newlines_per_frame`` / ``newlines_per_video``: the newline tokens the geometry feeds
    besides the grid tokens (reported, not counted in the formula's n).
    """

    name: str
    layers: int
    hidden: int
    ffn: int
    tokens_per_frame: int = 196
    frames_per_token: int = 1  # frames one temporal step of tokens covers (Qwen2.5-VL: 2)
    newlines_per_frame: int = 0
    newlines_per_video: int = 1
    geometry: str = LLAVA_ONEVISION

    def newline_tokens(self, frames: int) -> int:
        return frames * self.newlines_per_frame + self.newlines_per_video


def dims_for(name: str, layers: int, hidden: int, ffn: int, geometry: VideoGeometry, side: int = SIGLIP_SIDE) -> ModelDims:
    """ModelDims with tokens and newlines per frame from a video geometry on a ``side``-patch grid."""
    grid = geometry.newline_layout == "grid"
    per_frame = geometry.newlines(side, 1) if grid else 0
    return ModelDims(
        name, layers, hidden, ffn, geometry.tokens_per_frame(side),
        newlines_per_frame=per_frame, newlines_per_video=0 if grid else 1, geometry=geometry.name,
    )


BUILTIN_MODELS = {
    "llava-ov-0.5b": dims_for("llava-ov-0.5b", 24, 896, 4864, GEOMETRIES[LLAVA_ONEVISION]),
    "llava-ov-7b": dims_for("llava-ov-7b", 28, 3584, 18944, GEOMETRIES[LLAVA_ONEVISION]),
    "llava-ov-72b": dims_for("llava-ov-72b", 80, 8192, 29568, GEOMETRIES[LLAVA_ONEVISION]),
    "llava-video-7b": dims_for("llava-video-7b", 28, 3584, 18944, GEOMETRIES[LLAVA_VID]),
}


# Qwen2.5-VL Instruct text models (config.json): layers, hidden, FFN. Token geometry: 14-pixel
# patches, 2x2 merger, temporal patch 2, so one frame pair gives (H/28) x (W/28) tokens after
# the processor's smart resize (multiples of 28 within its min/max pixels).
QWEN2_5_VL_TEXT = {
    "qwen2.5-vl-3b": (36, 2048, 11008),
    "qwen2.5-vl-7b": (28, 3584, 18944),
    "qwen2.5-vl-72b": (80, 8192, 29568),
}
QWEN_DEFAULT_RESOLUTION = (448, 448)


def qwen_vl_tokens_per_pair(height: int, width: int, patch: int = 14, merge: int = 2, size: dict | None = None) -> int:
    """Merged tokens of one frame pair at ``height`` x ``width``, resized as the processor's own
    video path does (``smart_resize`` within ``size``'s shortest/longest edge in pixels; by
    default the video processor's own defaults)."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
        Qwen2VLVideoProcessor,
        smart_resize,
    )

    size = size or Qwen2VLVideoProcessor.size
    factor = patch * merge
    h, w = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    return (h // factor) * (w // factor)


def qwen_vl_dims(
    name: str, layers: int, hidden: int, ffn: int, resolution: tuple[int, int] | None,
    patch: int = 14, merge: int = 2, size: dict | None = None,
) -> ModelDims:
    height, width = resolution or QWEN_DEFAULT_RESOLUTION
    tokens = qwen_vl_tokens_per_pair(height, width, patch, merge, size)
    return ModelDims(name, layers, hidden, ffn, tokens, frames_per_token=2, newlines_per_video=0, geometry="qwen2_5_vl")


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` -> (H, W); None stays None."""
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--resolution {text!r} must be HEIGHTxWIDTH, e.g. 448x448") from None
    if height < 1 or width < 1:
        raise ValueError(f"--resolution {text!r} must be positive")
    return height, width


def layer_flops(tokens: int, hidden: int, ffn: int) -> int:
    """FastV's per-layer count: 4nd^2 + 2n^2d + 2ndm."""
    n, d, m = tokens, hidden, ffn
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def schedule_flops(stages: list[tuple[int, int]], dims: ModelDims) -> int:
    return sum(layers * layer_flops(tokens, dims.hidden, dims.ffn) for layers, tokens in stages)


def dims_from_config(path: str | Path, resolution: tuple[int, int] | None = None) -> ModelDims:
    """Read LLM dimensions and the video geometry's tokens per frame from a LLaVA or Qwen2.5-VL config.json (or folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {str(path)!r}: not one of {', '.join(BUILTIN_MODELS)} and no config.json there")
    config = json.loads(path.read_text())
    if config.get("model_type") == "qwen2_5_vl":
        return _qwen_dims_from_config(str(path.parent), config, resolution)
    text = config.get("text_config", config)
    vision = config.get("vision_config", {})
    side = vision.get("image_size", 384) // vision.get("patch_size", 14)
    geometry = detect_geometry(config, str(path.parent))
    return dims_for(str(path.parent), text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"], geometry, side)


def _qwen_dims_from_config(name: str, config: dict, resolution: tuple[int, int] | None) -> ModelDims:
    """A Qwen2.5-VL config.json: text dims (nested or flat, as hub configs are) and vision geometry."""
    text = config.get("text_config") or config
    vision = config.get("vision_config", {})
    patch, merge = vision.get("patch_size", 14), vision.get("spatial_merge_size", 2)
    dims = (text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"])
    return qwen_vl_dims(name, *dims, resolution, patch, merge, _video_size(Path(name)))


def _video_size(folder: Path) -> dict | None:
    """The checkpoint's own video-processor pixel limits, if its folder has them."""
    for file, key in (("video_preprocessor_config.json", None), ("processor_config.json", "video_processor")):
        if (folder / file).is_file():
            config = json.loads((folder / file).read_text())
            size = (config.get(key) or {}).get("size") if key else config.get("size")
            if size and "shortest_edge" in size and "longest_edge" in size:
                return size
    return None


def resolve_dims(model: str, resolution: tuple[int, int] | None = None) -> ModelDims:
    """Built-in dims by name, or read from a config.json; ``resolution`` sets Qwen2.5-VL's token geometry."""
    if model in QWEN2_5_VL_TEXT:
        return qwen_vl_dims(model, *QWEN2_5_VL_TEXT[model], resolution)
    return BUILTIN_MODELS[model] if model in BUILTIN_MODELS else dims_from_config(model, resolution)


def paper_flops(reducer: Reducer, dims: ModelDims, frames: int) -> dict[str, Any]:
    """Paper-convention prefill FLOPs of the LLM for a method on a model at ``frames`` frames."""
    visual = math.ceil(frames / dims.frames_per_token) * dims.tokens_per_frame
    stages = reducer.token_schedule(visual, dims.layers)
    flops = schedule_flops(stages, dims)
    full = schedule_flops([(dims.layers, visual)], dims)
    newlines = dims.newline_tokens(frames)
    layer_avg = sum(layers * tokens for layers, tokens in stages) / dims.layers
    return {
        "model": dims.name,
        "geometry": dims.geometry,
        "frames": frames,
        "method": reducer.name,
        "params": reducer.describe_params(),
        "visual_tokens_full": visual,
        "newline_tokens": newlines,
        "visual_tokens_fed": visual + newlines,
        "paper_tflops_full_fed": schedule_flops([(dims.layers, visual + newlines)], dims) / 1e12,
        "visual_tokens": stages[0][1],
        "visual_tokens_layer_avg": layer_avg,
        "schedule": [{"layers": layers, "tokens": tokens} for layers, tokens in stages],
        "paper_flops": flops,
        "paper_tflops": flops / 1e12,
        "percent_of_full": 100.0 * flops / full,
    }


def _sdpa_flop_handle(inputs, outputs):
    """fvcore handle: QK^T and AV products of scaled_dot_product_attention, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q_shape, k_shape, v_shape = (get_shape(value) for value in inputs[:3])
    *batch, queries, head_dim = q_shape
    keys = k_shape[-2]
    value_dim = v_shape[-1]
    return math.prod(batch) * queries * keys * (head_dim + value_dim)


def _mm_flop_handle(inputs, outputs):
    """fvcore handle for ``aten::mm``, in MACs. fvcore's own asserts exactly two inputs, so an
    ``out=`` matmul (k-means writes its distances into a preallocated buffer) would fail."""
    from fvcore.nn.jit_handles import get_shape

    (rows, inner), (_, columns) = (get_shape(value) for value in inputs[:2])
    return rows * inner * columns


def count_flops(module: torch.nn.Module, inputs: tuple) -> int:
    """fvcore FLOPs of ``module(*inputs)`` with SDPA counted; unsupported-op warnings muted."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_handle)
    analysis.set_op_handle("aten::mm", _mm_flop_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(analysis.total())
