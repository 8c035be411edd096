"""One sample end to end: frames -> vision -> reduction -> prefill -> greedy decode, timed.

The video is decoded once per sample: ``answer`` and ``measure_prefill_flops`` take a path or an
already read ``VideoClip``. Both run the same prefill pipeline (``Runner.prepare``: vision tower,
reducer, prompt splice, then ``engine.prefill``); the FLOPs trace wraps it, it does not copy it.

``Runner.answer`` returns a ``SampleRecord`` holding the answer and the sample's accounting
(visual tokens entering the LLM and per layer, TTFT parts, decode speed, peak memory). Any
failure (bad video, impossible budget, unservable model) is caught per sample and recorded
with its reason in ``error``; the answer is then None, never an empty string.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tokbench.harness import engine
from tokbench.harness.models.protocol import ModelAdapter, PreparedPrompt
from tokbench.harness.video import VideoClip
from tokbench.methods.base import ReducedTokens, Reducer, VideoTokens


@dataclass
class SampleRecord:
    doc_id: Any
    answer: str | None
    error: str | None = None
    visual_tokens: int | None = None
    visual_tokens_layer_avg: float | None = None
    prompt_tokens: int | None = None
    video_frames: int | None = None  # frames the video has (below the frames sampled: frames repeat)
    vision_ms: float | None = None
    reduce_ms: float | None = None
    prefill_ms: float | None = None
    decode_tok_s: float | None = None
    output_tokens: int | None = None
    peak_mem_mb: float | None = None
    layer_counts: list[int] = field(default_factory=list)
    method_info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class PrefillInputs:
    """One sample through vision and reduction, spliced into the prompt: what prefill consumes."""

    video: VideoTokens
    reduced: ReducedTokens
    prepared: PreparedPrompt
    vision_ms: float
    reduce_ms: float


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Runner:
    """Runs one reducer on one loaded model, sample by sample."""

    def __init__(self, adapter: ModelAdapter, reducer: Reducer, max_frames_num: int):
        self.adapter = adapter
        self.reducer = reducer
        self.max_frames_num = max_frames_num
        self.stack = adapter.decoder()
        self.layers = self.stack.num_layers
        engine.check_plan(reducer, self.layers)
        reducer.check_checkpoint(adapter.checkpoint_dir)

    def _sync(self) -> None:
        if self.adapter.device.type == "cuda":
            torch.cuda.synchronize(self.adapter.device)

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self._sync()
        start = time.perf_counter()
        value = fn()
        self._sync()
        return value, (time.perf_counter() - start) * 1000

    def clip(self, video: str | Path | VideoClip) -> VideoClip:
        """The sample's frames: read once from a path (by the adapter, as the family's lmms-eval
        reference model samples them), or the clip already read."""
        return video if isinstance(video, VideoClip) else self.adapter.read_video(str(video), self.max_frames_num)

    def prepare(self, pixels: torch.Tensor, prompt: str) -> PrefillInputs:
        """The prefill pipeline up to the LLM: vision tower, reducer, prompt splice (timed)."""
        adapter = self.adapter
        video, vision_ms = self._timed(lambda: adapter.encode_video(pixels))
        reduced, reduce_ms = self._timed(lambda: self.reducer.reduce_visual(video))
        prepared = adapter.prepare_prompt(prompt, reduced, video, self.reducer.position_policy_used)
        return PrefillInputs(video, reduced, prepared, vision_ms, reduce_ms)

    @torch.inference_mode()
    def answer(
        self, doc_id: Any, video: str | Path | VideoClip, context: str, max_new_tokens: int, until: list[str] | None = None
    ) -> SampleRecord:
        try:
            return self._answer(doc_id, video, context, max_new_tokens, until or [])
        except Exception as exc:  # recorded per sample; the sweep counts it as an error
            return SampleRecord(doc_id=doc_id, answer=None, error=f"{exc.__class__.__name__}: {exc}")

    def _answer(self, doc_id, video, context, max_new_tokens, until) -> SampleRecord:
        adapter = self.adapter
        if adapter.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(adapter.device)
        clip = self.clip(video)
        inputs = self.prepare(adapter.pixel_values(clip.frames), adapter.build_prompt(context, clip.plan))
        prepared = inputs.prepared
        self._sync()
        started = time.perf_counter()
        generation = engine.generate(
            self.stack,
            prepared.embeds,
            prepared.position_ids,
            prepared.visual_span,
            self.reducer,
            max_new_tokens,
            adapter.stop_token_ids(),
            synchronize=self._sync,
        )
        total_ms = (time.perf_counter() - started) * 1000
        prefill_ms = total_ms - generation.decode_seconds * 1000
        text = truncate_at(adapter.decode(generation.token_ids), until)
        counts = generation.prefill.layer_visual_counts
        return SampleRecord(
            doc_id=doc_id,
            answer=text,
            visual_tokens=inputs.reduced.count,
            visual_tokens_layer_avg=sum(counts) / len(counts),
            prompt_tokens=prepared.prompt_tokens,
            video_frames=clip.total_frames,
            vision_ms=inputs.vision_ms,
            reduce_ms=inputs.reduce_ms,
            prefill_ms=prefill_ms,
            decode_tok_s=generation.decode_tokens_per_second,
            output_tokens=len(generation.token_ids),
            peak_mem_mb=peak_memory_mb(adapter.device),
            layer_counts=counts,
            method_info={**inputs.reduced.info, **generation.prefill.info},
        )


def truncate_at(text: str, until: list[str]) -> str:
    """Cut the answer at the first stop string, as lmms-eval's ``until`` asks."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text


class _TracedPrefill(torch.nn.Module):
    """``Runner.prepare`` + ``engine.prefill`` as a module, so fvcore can trace the whole prefill."""

    def __init__(self, runner: Runner, prompt: str):
        super().__init__()
        self.model = runner.adapter.model
        self.runner = runner
        self.prompt = prompt

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        runner = self.runner
        prepared = runner.prepare(pixels, self.prompt).prepared
        result = engine.prefill(runner.stack, prepared.embeds, prepared.position_ids, prepared.visual_span, runner.reducer, use_cache=False)
        return result.logits


def measure_prefill_flops(runner: Runner, video: str | Path | VideoClip, context: str) -> int:
    """fvcore-measured FLOPs of one sample's prefill (vision tower, reducer, LLM)."""
    from tokbench.harness.flops import count_flops

    clip = runner.clip(video)
    pixels = runner.adapter.pixel_values(clip.frames)
    with torch.no_grad():
        return count_flops(_TracedPrefill(runner, runner.adapter.build_prompt(context, clip.plan)), (pixels,))
