"""GPU check of the real geometries: engine vs HF ``generate`` and every method, timed, to one JSON.

Run by ``scripts/gpu_check.sh`` when a GPU is lent (target: under 8 minutes on one GPU). For each
reference model (``embedded/reference_configs.py``: LLaVA-OV-0.5B, LLaVA-OV-7B,
LLaVA-Video-7B with their exact widths, depth cut, random weights) and each attention kernel
available (SDPA always; flash-attention 2 when ``flash_attn`` imports and the device is CUDA):

* ``full`` through our engine against Hugging Face ``generate`` (greedy tokens equal, largest
  first-step logit difference). OV geometries go through the HF processor and model end to end;
  the llava_vid geometry (which HF's model does not implement) compares the language model on
  the same spliced embeddings (the geometry itself is checked against LLaVA-NeXT on CPU in
  ``tests/test_real_geometry.py``);
* every registered method at ``--frames`` frames: visual tokens, CUDA-synchronised vision /
  reduce / prefill milliseconds, decode tokens/s and ``torch.cuda.max_memory_allocated`` (reset
  before each method), or the error it raised.

``--quick`` (also implied by ``--cpu``) is the same code path small enough for a CPU: vocabulary
cut to 512 rows, 1 vision layer, 2 frames. The JSON goes to ``$OUT`` if set, else
``results/gpu_check/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokbench.harness import engine
from tokbench.harness.models.llava_onevision import open_llava_adapter
from embedded.reference_configs import REFERENCE_MODELS, build_reference_checkpoint
from tokbench.methods.base import keep_all
from tokbench.methods.registry import available, build_reducer

QUESTION = "What happens in the video?"
SMALL_VOCAB = 512


def method_params(name: str, num_layers: int) -> dict[str, str]:
    """Parameters that make every method run on a depth-cut, random-weight model."""
    layer = str(max(1, num_layers // 2))
    return {"fastv": {"K": layer}, "holitom": {"K": layer}, "token_dynamics": {"allow_random_weights": "true"}}.get(name, {})


class Clock:
    """Milliseconds of a callable, CUDA-synchronised before and after."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn):
        self.sync()
        start = time.perf_counter()
        value = fn()
        self.sync()
        return value, (time.perf_counter() - start) * 1000


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@torch.inference_mode()
def compare_with_generate(adapter, frames: np.ndarray, new_tokens: int) -> dict[str, Any]:
    """``full`` through the engine vs HF greedy generate (see the module docstring)."""
    prompt = adapter.build_prompt(QUESTION)
    video = adapter.encode_video(adapter.pixel_values(frames))
    prepared = adapter.prepare_prompt(prompt, keep_all(video), video, "compact")
    ours = engine.generate(adapter.decoder(), prepared.embeds, prepared.position_ids, prepared.visual_span, None, new_tokens, set())
    common = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    if adapter.geometry.name == "llava_onevision":
        inputs = adapter.processor(videos=[frames], text=prompt, return_tensors="pt").to(adapter.device)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(adapter.dtype)
        reference = adapter.model.generate(**inputs, **common)
        fed = int((inputs["input_ids"] == adapter.video_token_id).sum())
        compared = "processor + model.generate"
    else:
        mask = torch.ones(prepared.embeds.shape[:2], dtype=torch.long, device=adapter.device)
        reference = adapter.model.generate(inputs_embeds=prepared.embeds, attention_mask=mask, **common)
        fed = video.default_token_count
        compared = "model.generate on the same spliced embeddings"
    theirs = reference.sequences[0, -new_tokens:].tolist()
    return {
        "compared_with": compared,
        "visual_tokens_ours": video.default_token_count,
        "visual_tokens_reference": fed,
        "tokens_equal": ours.token_ids == theirs,
        "first_logits_max_abs_diff": float((ours.prefill.logits.float() - reference.logits[0][0].float()).abs().max()),
    }


@torch.inference_mode()
def run_methods(adapter, frames: np.ndarray, new_tokens: int) -> dict[str, Any]:
    clock = Clock(adapter.device)
    stack = adapter.decoder()
    prompt = adapter.build_prompt(QUESTION)
    pixels = adapter.pixel_values(frames)
    out: dict[str, Any] = {}
    for name in available():
        record: dict[str, Any] = {"params": method_params(name, stack.num_layers)}
        try:
            reducer = build_reducer(name, record["params"])
            reset_peak(adapter.device)
            video, record["vision_ms"] = clock.time(lambda: adapter.encode_video(pixels))
            reduced, record["reduce_ms"] = clock.time(lambda: reducer.reduce_visual(video))
            prepared = adapter.prepare_prompt(prompt, reduced, video, reducer.position_policy_used)
            generation, total_ms = clock.time(
                lambda: engine.generate(stack, prepared.embeds, prepared.position_ids, prepared.visual_span, reducer, new_tokens, set(), synchronize=clock.sync)
            )
            counts = generation.prefill.layer_visual_counts
            record.update(
                visual_tokens_default=video.default_token_count,
                visual_tokens=reduced.count,
                visual_tokens_layer_avg=sum(counts) / len(counts),
                prefill_ms=total_ms - generation.decode_seconds * 1000,
                decode_tok_s=generation.decode_tokens_per_second,
                peak_mem_mb=peak_mb(adapter.device),
            )
        except Exception as exc:  # one method's failure is a result, not the end of the check
            record["error"] = f"{exc.__class__.__name__}: {exc}"
        out[name] = record
    return out


def attention_kernels(device: torch.device) -> list[str]:
    kernels = ["sdpa"]
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            kernels.append("flash_attention_2")
        except ImportError:
            pass
    return kernels


def build_models(names: list[str], root: Path, quick: bool, text_layers: int) -> dict[str, tuple[Path, float]]:
    """Build each reference model once; LLaVA-OV-7B reuses LLaVA-Video-7B's random weights (hard links)."""
    vocab = SMALL_VOCAB if quick else None
    vision_layers = 1 if quick else 2
    built: dict[str, tuple[Path, float]] = {}
    for name in names:
        start = time.perf_counter()
        twin = {"llava-ov-7b": "llava-video-7b", "llava-video-7b": "llava-ov-7b"}.get(name)
        if twin in built:
            path = _relink(built[twin][0], root / name, video=name == "llava-video-7b")
        else:
            path = build_reference_checkpoint(name, root / name, vision_layers=vision_layers, text_layers=text_layers, vocab_size=vocab)
        built[name] = (path, time.perf_counter() - start)
    return built


def _relink(source: Path, out: Path, video: bool) -> Path:
    out.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "config.json":
            os.link(item, out / item.name)
    config = json.loads((source / "config.json").read_text())
    for key in ("mm_newline_position", "mm_spatial_pool_mode"):
        config.pop(key, None)
    if video:
        config.update(mm_newline_position="grid", mm_spatial_pool_mode="average")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU (implies --quick)")
    parser.add_argument("--quick", action="store_true", help="vocabulary cut to 512 rows, 1 vision layer, 2 frames")
    parser.add_argument("--models", default=",".join(REFERENCE_MODELS), help="comma-separated reference models")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 32; 2 with --quick)")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--out", default=None, help="output folder (default: $OUT, else results/gpu_check)")
    args = parser.parse_args(argv)
    quick = args.quick or args.cpu
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    frames_count = args.frames or (2 if quick else 32)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REFERENCE_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: one of {', '.join(REFERENCE_MODELS)}")
    out_dir = Path(args.out or os.environ.get("OUT") or "results/gpu_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(0).integers(0, 255, size=(frames_count, 360, 640, 3), dtype=np.uint8)
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(device), "dtype": dtype, "frames": frames_count, "quick": quick,
                              "text_layers": args.text_layers, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, build_s) in build_models(names, Path(tmp), quick, args.text_layers).items():
            entry: dict[str, Any] = {"hub_id": REFERENCE_MODELS[name].hub_id, "build_s": build_s, "kernels": {}}
            for kernel in attention_kernels(device):
                result: dict[str, Any] = {}
                try:
                    load_start = time.perf_counter()
                    adapter = open_llava_adapter(str(path), device=str(device), dtype=dtype, attn_implementation=kernel)
                    result["load_s"] = time.perf_counter() - load_start
                    result["geometry"] = adapter.geometry.name
                    result["engine_vs_generate"] = compare_with_generate(adapter, frames, args.new_tokens)
                    result["methods"] = run_methods(adapter, frames, args.new_tokens)
                    del adapter
                except Exception as exc:
                    result["error"] = f"{exc.__class__.__name__}: {exc}"
                entry["kernels"][kernel] = result
                print(json.dumps({name: {kernel: {k: v for k, v in result.items() if k != "methods"}}}, default=str), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            report["models"][name] = entry
    report["total_s"] = time.perf_counter() - started
    path = out_dir / f"gpu_check_{device.type}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path} in {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
