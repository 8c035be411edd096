"""Per-family val accuracy of a trained checkpoint on clips of a few frames: a training diagnosis.

``python -m embedded.eval_clips checkpoints/tiny-llava-ov-synthvqa --frames 5 8 16`` cuts every
val video to N frames that keep its key frames (``embedded.train_curriculum.clip``: the answer is
unchanged; a sample with more key frames than N is skipped) and scores the greedy first token as
training's validation does. A family answered on short clips but not on full videos points at
length generalisation; a family at chance at every length was never learned.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embedded.train_curriculum import clip
from embedded.train_tiny import PromptCodec, evaluate
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.tasks.synthvqa.generate import render_spec, sample_specs


def clip_accuracy(model, processor, tokenizer, frames: int, count: int = 120, seed: int = 0) -> dict[str, float]:
    """Accuracy overall and per family on the first ``count`` val samples cut to ``frames`` frames,
    plus ``samples``: how many had few enough key frames to be cut."""
    rng = np.random.default_rng(seed)
    samples = []
    for spec in sample_specs("val", count):
        try:
            samples.append(clip(render_spec(spec), frames, rng))
        except ValueError:  # more key frames than the clip holds
            continue
    scores = evaluate(model, processor, PromptCodec(tokenizer, processor, frames), samples)
    return {**{key: round(value, 4) for key, value in scores.items()}, "samples": len(samples)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 8, 16])
    parser.add_argument("--count", type=int, default=120, help="val samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter = LlavaOnevisionAdapter(str(args.checkpoint), device="cpu", dtype="float32")
    for frames in args.frames:
        scores = clip_accuracy(adapter.model, adapter.processor, adapter.tokenizer, frames, args.count)
        print(json.dumps({"frames": frames, **scores}), flush=True)


if __name__ == "__main__":
    main()
