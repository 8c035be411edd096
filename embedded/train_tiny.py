"""Train the embedded default model: a small LLaVA-OneVision on SynthVQA train, on CPU.

``python -m embedded.train_tiny --out checkpoints/tiny-llava-ov-synthvqa`` builds the model
(``embedded.tiny``: SigLIP-style tower, 2x2-pooled 7x7 grid per frame, Qwen2-style
decoder, a byte-level BPE tokenizer whose merges are learned from SynthVQA prompts), trains
every weight from scratch on freshly rendered SynthVQA train samples (never the val or test
seeds) and writes a Hugging Face checkpoint plus ``training.json`` (settings, seed, wall time,
loss and validation accuracy along the way).

The prompt is exactly the one evaluation builds (lmms-eval's ``doc_to_text`` and llava_hf's
chat template, see ``LlavaOnevisionAdapter.build_prompt``), and pixels go through the
checkpoint's own video processor. The video comes before the question, so the system prompt
plus the video tokens are a prefix shared by every question about that video: each step runs
that prefix once per video and then ``permutations`` copies of the question (the same options
with the correct one moved to each letter in turn) on the prefix's key/value cache. The loss
is cross-entropy on the answer letter and the end-of-turn token. With ``--open-ended 1``
(default) each video also gets the question without options, answered with the correct
option's text: from scratch, the letter alone gives no signal until the model both sees the
answer and links it to its letter (training sat at chance for 450 steps without it), whereas
naming what it sees is learnable directly. With ``--subset-share`` some steps show each video
only a random subset of its tokens (``embedded.train_token_subsets``). Validation renders the val
split's samples in memory and scores the greedy first token, as ``full`` would answer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedded.tiny import (
    TinySpec,
    build_model,
    build_processor,
    build_tokenizer,
    save_checkpoint,
)
from embedded.train_curriculum import clip, draw_specs, stage_at, stages
from embedded.train_targets import AuxiliaryHeads, appearance_targets, object_cell_coverage, patch_targets
from embedded.train_token_subsets import (
    check_keep_range,
    draw_keep_count,
    is_subset_step,
    random_subsets,
    subset_prefix_embeds,
)
from tokbench.harness.models.llava_onevision import VIDEO_TOKEN
from tokbench.tasks.synthvqa.generate import FAMILIES, LETTERS, Sample, render_spec, sample_specs
from tokbench.tasks.synthvqa.utils import POST_PROMPT, synthvqa_doc_to_text

OPEN_POST_PROMPT = "Answer with one word."
DEFAULT_SPEC = TinySpec(vision_layers=3)
POOL_STRIDE = 2  # LLaVA-OV pools 2x2 vision patches into one video token


def chat_prompt(tokenizer, question: str, options: Sequence[str]) -> str:
    """The prompt evaluation builds for this question (lmms-eval text, llava_hf chat template)."""
    context = synthvqa_doc_to_text({"question": question, "options": list(options)}, {"post_prompt": POST_PROMPT})
    messages = [{"role": "user", "content": f"{VIDEO_TOKEN}\n{context}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def open_prompt(tokenizer, question: str) -> str:
    """The auxiliary open-ended form of a question: no options, answered with the option's text."""
    messages = [{"role": "user", "content": f"{VIDEO_TOKEN}\n{question}\n{OPEN_POST_PROMPT}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def correct_option(sample: Sample) -> str:
    return sample.options[LETTERS.index(sample.answer)]


def tokenizer_corpus(count: int = 1200) -> list[str]:
    """Prompts and answers of the first ``count`` train samples: the text the BPE merges come from."""
    probe = build_tokenizer()
    texts = []
    for spec in sample_specs("train", count):
        sample = render_spec(spec)
        texts.append(chat_prompt(probe, sample.question, sample.options) + sample.answer)
        texts.append(open_prompt(probe, sample.question) + correct_option(sample))
    return texts


class PromptCodec:
    """Splits each prompt into the shared prefix (system + video tokens) and a per-question suffix."""

    def __init__(self, tokenizer, processor, num_frames: int):
        self.tokenizer = tokenizer
        self.video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.letter_ids = [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
        probe = chat_prompt(tokenizer, "?", ["a", "b", "c", "d"])
        dummy = np.zeros(
            (
                num_frames,
                processor.video_processor.size["height"],
                processor.video_processor.size["width"],
                3,
            ),
            np.uint8,
        )
        expanded = processor(text=[probe], videos=[dummy], return_tensors="pt")["input_ids"][0].tolist()
        self.num_video_tokens = expanded.count(self.video_id)
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        self.head = ids[: ids.index(self.video_id) + 1]  # system + user header + the <video> token
        self.prefix = self.head[:-1] + [self.video_id] * self.num_video_tokens
        self.video_start = len(self.head) - 1  # index of the first video token in the prefix

    def _after_video(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids[: len(self.head)] != self.head:
            raise RuntimeError("the prompt's prefix differs between questions; cannot share it")
        return ids[len(self.head) :]

    def suffix(self, question: str, options: Sequence[str], answer: str) -> tuple[list[int], int]:
        """Token ids after the video (question, options, assistant header, letter, end of turn)
        and how many of them at the end are targets (2: the letter and end of turn)."""
        ids = self._after_video(chat_prompt(self.tokenizer, question, options))
        return ids + [self.letter_ids[LETTERS.index(answer)], self.end_id], 2

    def open_suffix(self, question: str, answer_text: str) -> tuple[list[int], int]:
        """The open-ended form: question, assistant header, the answer's text, end of turn."""
        answer = self.tokenizer(answer_text, add_special_tokens=False)["input_ids"] + [self.end_id]
        return self._after_video(open_prompt(self.tokenizer, question)) + answer, len(answer)


def permuted_questions(sample: Sample, copies: int, rng: np.random.Generator) -> list[tuple[list[str], str]]:
    """``copies`` option orders of a sample, the correct option moved to a different letter each time."""
    correct = correct_option(sample)
    distractors = [o for o in sample.options if o != correct]
    slots = rng.permutation(len(LETTERS))[:copies]
    out = []
    for slot in slots:
        options = [distractors[int(i)] for i in rng.permutation(len(distractors))]
        options.insert(int(slot), correct)
        out.append((options, LETTERS[int(slot)]))
    return out


def target_logits(
    model,
    codec: PromptCodec,
    pixels: torch.Tensor,
    suffixes: list[tuple[list[int], int]],
    copies: int,
    prefix_hidden: list | None = None,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, V] at every position that predicts a target token, and those targets [N].

    ``pixels`` is [B, T, C, H, W]; suffix ``i`` (ids, number of trailing targets) belongs to
    video ``i // copies``. Targets come suffix by suffix, in order. If ``prefix_hidden`` is a
    list, the prefix's hidden states (embeddings, then every layer) are appended to it. With
    ``keep`` [B, k] the prefix holds only those video tokens (``embedded.train_token_subsets``).
    """
    batch = pixels.shape[0]
    if keep is None:
        prefix = torch.tensor(codec.prefix).expand(batch, -1)
        out = model.model(
            input_ids=prefix,
            pixel_values_videos=pixels,
            use_cache=True,
            output_hidden_states=prefix_hidden is not None,
        )
    else:
        embeds = subset_prefix_embeds(model.model, codec.head[:-1], video_features(model, pixels), keep)
        out = model.model.language_model(
            inputs_embeds=embeds, use_cache=True, output_hidden_states=prefix_hidden is not None
        )
    if prefix_hidden is not None:
        prefix_hidden.extend(out.hidden_states)
    cache = out.past_key_values
    if copies > 1:
        cache.batch_repeat_interleave(copies)
    width = max(len(ids) for ids, _ in suffixes)
    batch_ids = torch.full((len(suffixes), width), codec.tokenizer.pad_token_id)
    rows, columns, targets = [], [], []
    for row, (ids, n_targets) in enumerate(suffixes):
        batch_ids[row, : len(ids)] = torch.tensor(ids)
        for position in range(len(ids) - n_targets, len(ids)):  # predicted from the position before
            rows.append(row)
            columns.append(position - 1)
            targets.append(ids[position])
    hidden = model.model.language_model(input_ids=batch_ids, past_key_values=cache, use_cache=False).last_hidden_state
    return model.lm_head(hidden[torch.tensor(rows), torch.tensor(columns)]), torch.tensor(targets)


def video_pixels(processor, samples: Sequence[Sample]) -> torch.Tensor:
    return processor.video_processor(videos=[s.frames for s in samples], return_tensors="pt")["pixel_values_videos"]


@torch.no_grad()
def evaluate(model, processor, codec: PromptCodec, samples: Sequence[Sample], batch: int = 8) -> dict[str, float]:
    """Greedy first-token accuracy on ``samples`` (their own option order), overall and per family."""
    model.eval()
    hits: dict[str, list[float]] = {family: [] for family in FAMILIES}
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        suffixes = [codec.suffix(s.question, s.options, s.answer) for s in chunk]
        logits, targets = target_logits(model, codec, video_pixels(processor, chunk), suffixes, 1)
        letters = logits[0::2].argmax(-1) == targets[0::2]  # two targets per suffix: letter, end of turn
        for sample, hit in zip(chunk, letters.tolist(), strict=True):
            hits[sample.family].append(float(hit))
    model.train()
    scores = {f"acc_{family}": sum(h) / len(h) for family, h in hits.items() if h}
    scores["accuracy"] = sum(sum(h) for h in hits.values()) / len(samples)
    return scores


def patch_pixels(samples: Sequence[Sample], spec: TinySpec) -> int:
    """The side of one vision patch in the samples' rendered pixels."""
    return samples[0].layout.shape[1] * spec.patch_size // spec.image_size


def auxiliary_loss(
    heads: AuxiliaryHeads,
    samples: Sequence[Sample],
    spec: TinySpec,
    codec: PromptCodec,
    patch_tokens: torch.Tensor,
    input_hidden: torch.Tensor,
    layer_hidden: torch.Tensor,
    onsets_from_frame: int = 0,
) -> torch.Tensor:
    """The intermediate supervision of ``embedded.train_targets`` for one batch (the per-patch part
    only while the vision tower and projector still train)."""
    patch_px = patch_pixels(samples, spec)
    cell = POOL_STRIDE * patch_px
    onset, leader, motion = appearance_targets(samples, cell, onsets_from_frame)
    video = slice(codec.video_start, codec.video_start + onset.shape[1])
    token_loss = heads.token_loss(layer_hidden[:, video], onset, leader, motion)
    if not patch_tokens.requires_grad:  # frozen by --freeze-vision: nothing left to teach them
        return token_loss
    loss = heads.patch_loss(patch_tokens, *patch_targets(samples, patch_px)) + token_loss
    if heads.summary is not None:
        loss = loss + object_summary_loss(heads, samples, input_hidden[:, video], cell)
    return loss


def object_summary_loss(heads: AuxiliaryHeads, samples: Sequence[Sample], tokens: torch.Tensor, cell: int) -> torch.Tensor:
    """``heads.object_loss`` of the samples' objects, read from their video tokens [B, T * cells, D]
    (``cell``: the side in pixels of the frame area one video token covers)."""
    frames = samples[0].layout.shape[0]
    return heads.object_loss(tokens, frames, *object_cell_coverage(samples, cell))


def video_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Video tokens as the language model receives them, the newline last: [B, T * cells + 1, D]."""
    return model.model.get_video_features(
        pixel_values_videos=pixels,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    ).pooler_output


def video_tokens(model, processor, samples: Sequence[Sample]) -> torch.Tensor:
    """The samples' video tokens as the language model receives them, without the newline
    appended after each video: [B, T * cells, D]."""
    return video_features(model, video_pixels(processor, samples))[:, :-1]


def vision_loss(model, processor, heads: AuxiliaryHeads, samples: Sequence[Sample], spec: TinySpec, patch_tokens: list) -> torch.Tensor:
    """The per-patch supervision (and the object summaries, when on) through the vision tower and
    projector only (curriculum stage 0)."""
    tokens = video_tokens(model, processor, samples)  # also fills ``patch_tokens`` through the projector hook
    patch_px = patch_pixels(samples, spec)
    loss = heads.patch_loss(patch_tokens[0], *patch_targets(samples, patch_px))
    if heads.summary is not None:
        loss = loss + object_summary_loss(heads, samples, tokens, POOL_STRIDE * patch_px)
    return loss


@torch.no_grad()
def freeze_vision(model, processor, samples: Sequence[Sample], target_norm: float) -> float:
    """Freeze the vision tower and projector after the vision-only stage, with the projector's
    output rescaled so that video tokens have mean norm ``target_norm``; returns the factor.

    The vision-only stage leaves video tokens far larger than the language model's residual stream
    (norm 79 against 7 in run 1's model, see embedded/README.md), so the layers' updates to them barely
    count. The rescale changes only their scale, not their content. (In the one run tried, answer
    training still stayed at chance: see embedded/README.md.)"""
    factor = target_norm / float(video_tokens(model, processor, samples).norm(dim=-1).mean())
    output_layer = model.model.multi_modal_projector.linear_2
    output_layer.weight.mul_(factor)
    output_layer.bias.mul_(factor)
    for module in (model.model.vision_tower, model.model.multi_modal_projector):
        module.requires_grad_(False)
    return factor


def answer_step(
    args, model, processor, codec: PromptCodec, stage, specs, rng, heads, spec: TinySpec, patch_tokens: list, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of a question-answering stage at training step ``step``: (answer loss, auxiliary loss)."""
    picked = draw_specs(specs, stage.families, args.family_weights, args.batch, rng)
    samples = [clip(render_spec(s, args.frames), stage.frames, rng) for s in picked]
    suffixes = []
    for sample in samples:
        for options, answer in permuted_questions(sample, args.permutations, rng):
            suffixes.append(codec.suffix(sample.question, options, answer))
        if args.open_ended:
            suffixes.append(codec.open_suffix(sample.question, correct_option(sample)))
    copies = args.permutations + int(args.open_ended)
    keep = None
    if is_subset_step(args.subset_share, args.subset_from, step, rng):
        total = codec.num_video_tokens - 1  # the newline is always kept
        keep = random_subsets(len(samples), total, draw_keep_count(total, *args.subset_keep, rng), rng)
    supervised = heads is not None and keep is None  # the per-token targets are for the whole video
    hidden: list[torch.Tensor] | None = [] if supervised else None  # hidden states only when the heads read them
    logits, targets = target_logits(model, codec, video_pixels(processor, samples), suffixes, copies, hidden, keep)
    answer_loss = F.cross_entropy(logits, targets)
    aux_loss = torch.zeros(())
    if supervised:
        aux_loss = auxiliary_loss(
            heads, samples, spec, codec, patch_tokens[0], hidden[0], hidden[args.aux_layer], args.onsets_from_frame
        )
    return answer_loss, aux_loss


def load_start(checkpoint: Path) -> tuple[dict, object, torch.nn.Module]:
    """The training record, tokenizer and weights of a checkpoint this script wrote, to train it further."""
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    record = checkpoint / "training.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: --init takes a checkpoint written by embedded.train_tiny")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint).train()
    return json.loads(record.read_text()), AutoTokenizer.from_pretrained(checkpoint), model


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def write_record(
    args, spec: TinySpec, plan, model, log: list[dict], started: float, previous: dict | None
) -> None:
    """``training.json`` beside the weights: command, geometry, curriculum, settings, wall time and
    the log up to the saved step (``completed_steps`` says how far the run had got), plus the
    record of the run this one continues (``previous``, with ``--init``)."""
    summary = {
        "command": "python -m embedded.train_tiny " + " ".join(args.argv),
        "spec": asdict(spec),
        "curriculum": [asdict(stage) for stage in plan],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "argv")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "completed_steps": log[-1]["step"],
        "train_samples": log[-1]["step"] * args.batch,
        "minutes": round((time.time() - started) / 60, 1),
        "final_val": log[-1].get("val"),
        "log": log,
    }
    if previous is not None:
        summary["previous_run"] = previous
        summary["total_minutes"] = round(summary["minutes"] + previous.get("total_minutes", previous["minutes"]), 1)
    (Path(args.out) / "training.json").write_text(json.dumps(summary, indent=1) + "\n")


def train(args: argparse.Namespace, spec: TinySpec = DEFAULT_SPEC) -> Path:
    """Train a model of geometry ``spec`` as ``args`` say; write it to ``args.out``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    previous = None
    if args.init is None:
        tokenizer = build_tokenizer(tokenizer_corpus(args.tokenizer_samples))
        model = build_model(spec, tokenizer).train()
    else:
        previous, tokenizer, model = load_start(args.init)
        spec = TinySpec(**previous["spec"])
    processor = build_processor(spec, tokenizer)
    plan = stages(
        args.vision_steps, args.steps, args.single_frame_steps, args.short_clip_steps, args.short_frames, args.frames
    )
    codecs = {stage.frames: PromptCodec(tokenizer, processor, stage.frames) for stage in plan if not stage.vision_only}
    codecs.setdefault(args.frames, PromptCodec(tokenizer, processor, args.frames))
    val = [render_spec(s, args.frames) for s in sample_specs("val", args.val_count)]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    heads = None
    if args.aux_weight:
        grid = spec.image_size // spec.patch_size if args.position_targets else None
        heads = AuxiliaryHeads(spec.text_hidden, grid, args.object_shape_weight, args.object_summary_weight)
    if heads is not None:
        optimizer.add_param_group({"params": list(heads.parameters()), "weight_decay": 0.0})
    patch_tokens: list[torch.Tensor] = []  # the projector's latest output (un-pooled patch tokens)
    model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: patch_tokens.__setitem__(slice(None), [out]))
    specs = sample_specs("train", (args.steps * args.batch + args.vision_steps * args.vision_batch) * len(FAMILIES))
    total_steps = args.vision_steps + args.steps
    log: list[dict] = []
    started = time.time()
    running = np.zeros(2)
    for step in range(total_steps):
        stage = stage_at(plan, step)
        if args.freeze_vision and step == args.vision_steps:
            handoff = [clip(render_spec(next(specs), args.frames), 1, rng) for _ in range(args.vision_batch)]
            print(json.dumps({"frozen_vision_rescaled_by": freeze_vision(model, processor, handoff, args.video_token_norm)}))
        if stage.vision_only:
            samples = [clip(render_spec(next(specs), args.frames), 1, rng) for _ in range(args.vision_batch)]
            answer_loss, aux_loss = torch.zeros(()), vision_loss(model, processor, heads, samples, spec, patch_tokens)
            rate = learning_rate(step, args.vision_steps, args.vision_lr, args.warmup)
        else:
            answer_loss, aux_loss = answer_step(
                args, model, processor, codecs[stage.frames], stage, specs, rng, heads, spec, patch_tokens, step
            )
            rate = learning_rate(step - args.vision_steps, args.steps, args.lr, args.warmup)
        loss = answer_loss + args.aux_weight * aux_loss
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses = np.array([answer_loss.item(), aux_loss.item()])
        running = losses if step == 0 else 0.95 * running + 0.05 * losses
        done = step + 1
        if done % args.log_every == 0 or done == total_steps:
            entry = {
                "step": done,
                "frames": stage.frames,
                **({"vision_only": True} if stage.vision_only else {}),
                "loss": round(float(running[0]), 4),
                "aux_loss": round(float(running[1]), 4),
                "minutes": round((time.time() - started) / 60, 2),
            }
            if (done % args.eval_every == 0 and not stage.vision_only) or done == total_steps:
                scores = evaluate(model, processor, codecs[args.frames], val)
                entry["val"] = {k: round(v, 4) for k, v in scores.items()}
                save_checkpoint(args.out, spec, model.eval(), tokenizer)
                write_record(args, spec, plan, model, log + [entry], started, previous)
                model.train()
            log.append(entry)
            print(json.dumps(entry), flush=True)
    model.eval()
    save_checkpoint(args.out, spec, model, tokenizer)
    write_record(args, spec, plan, model, log, started, previous)
    return Path(args.out)


def add_loop_args(parser: argparse.ArgumentParser, log_every: int, eval_every: int, val_count: int) -> None:
    """Options both training entry points share: option permutations, frames, logging, seed."""
    parser.add_argument("--permutations", type=int, default=4, help="option orders per video (1-4)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument(
        "--val-count",
        type=int,
        default=val_count,
        help="val samples scored at each evaluation",
    )
    parser.add_argument("--log-every", type=int, default=log_every)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def finish_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, check the shared options, and keep the command line for ``training.json``."""
    args = parser.parse_args(argv)
    if not 1 <= args.permutations <= len(LETTERS):
        parser.error(f"--permutations must be 1-{len(LETTERS)}")
    if args.eval_every % args.log_every:
        parser.error("--eval-every must be a multiple of --log-every")
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the small LLaVA-OneVision of the embedded default on SynthVQA.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from a checkpoint this script wrote (its geometry and tokenizer) instead of from scratch",
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="videos per step")
    parser.add_argument(
        "--open-ended",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: also ask each question without options, answered with the option's text",
    )
    parser.add_argument(
        "--aux-weight",
        type=float,
        default=1.0,
        help="weight of the intermediate supervision (embedded.train_targets); 0 turns it off",
    )
    parser.add_argument(
        "--aux-layer",
        type=int,
        default=2,
        help="language-model layer whose video tokens are supervised",
    )
    parser.add_argument(
        "--position-targets",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: every patch token also predicts its row and column",
    )
    parser.add_argument(
        "--onsets-from-frame",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: no onset or first-cell targets in frame 0, where every object 'appears' (the committed model: 0)",
    )
    parser.add_argument(
        "--object-shape-weight",
        type=float,
        default=0.0,
        help="weight of the shape loss repeated over object patches alone (0: off)",
    )
    parser.add_argument(
        "--object-summary-weight",
        type=float,
        default=0.0,
        help="weight of the shape and colour read from each object's mean video token (0: off)",
    )
    parser.add_argument(
        "--vision-steps",
        type=int,
        default=0,
        help="curriculum stage 0: steps on the vision tower and projector alone (per-patch targets and, "
        "with --object-summary-weight, the object summaries; "
        "see embedded/README.md: from scratch the language model's stages then stalled at chance, after --init not)",
    )
    parser.add_argument(
        "--freeze-vision",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: after stage 0, freeze the vision tower and projector, rescaled to --video-token-norm",
    )
    parser.add_argument("--video-token-norm", type=float, default=5.0, help="mean video-token norm after --freeze-vision")
    parser.add_argument("--vision-batch", type=int, default=32, help="single frames per vision-only step")
    parser.add_argument("--vision-lr", type=float, default=1e-3)
    parser.add_argument(
        "--single-frame-steps",
        type=int,
        default=300,
        help="curriculum stage 1 (embedded.train_curriculum): steps on single frames of static/small_object",
    )
    parser.add_argument(
        "--short-clip-steps",
        type=int,
        nargs="+",
        default=[600],
        help="curriculum stage 2: steps on key-frame clips, one count per --short-frames length",
    )
    parser.add_argument(
        "--short-frames",
        type=int,
        nargs="+",
        default=[5],
        help="frames per clip of each short-clip stage, in training order (e.g. 5 8 12)",
    )
    parser.add_argument(
        "--family-weights",
        nargs="*",
        default=[],
        metavar="FAMILY=WEIGHT",
        help="relative share of a family in the question-answering batches (1 for those not named); "
        "none given: families round-robin",
    )
    parser.add_argument(
        "--subset-share",
        type=float,
        default=0.0,
        help="share of question-answering steps that see a random subset of the video tokens "
        "(embedded.train_token_subsets; 0: off)",
    )
    parser.add_argument(
        "--subset-from",
        type=int,
        default=0,
        help="first training step (0-based, over every stage) that may be a subset step; with "
        "subsets from the start, the single-frame and 5-frame stages learned more slowly (see embedded/README.md)",
    )
    parser.add_argument(
        "--subset-keep",
        type=float,
        nargs=2,
        default=[0.01, 0.3],
        metavar=("LOW", "HIGH"),
        help="range of the kept fraction in a subset step (drawn log-uniformly)",
    )
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument(
        "--tokenizer-samples",
        type=int,
        default=1200,
        help="train prompts the BPE merges are learned from",
    )
    add_loop_args(parser, log_every=25, eval_every=250, val_count=120)
    args = finish_args(parser, argv)
    if args.vision_steps and not args.aux_weight:
        parser.error("--vision-steps trains on the per-patch targets alone; it needs --aux-weight > 0")
    if args.freeze_vision and not args.vision_steps:
        parser.error("--freeze-vision freezes what stage 0 trained; it needs --vision-steps > 0")
    try:  # the curriculum's own checks: step counts per length, lengths, total
        stages(
            args.vision_steps, args.steps, args.single_frame_steps, args.short_clip_steps, args.short_frames, args.frames
        )
    except ValueError as error:
        parser.error(f"curriculum: {error}")
    if not 0 <= args.subset_share <= 1:
        parser.error("--subset-share must be in [0, 1]")
    if args.subset_from < 0:
        parser.error("--subset-from must be >= 0")
    try:
        check_keep_range(*args.subset_keep)
    except ValueError as error:
        parser.error(f"--subset-keep: {error}")
    args.family_weights = parse_family_weights(parser, args.family_weights)
    return args


def parse_family_weights(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, float]:
    """``FAMILY=WEIGHT`` items as a dict, each family known and each weight positive."""
    weights = {}
    for item in items:
        family, _, weight = item.partition("=")
        if family not in FAMILIES:
            parser.error(f"--family-weights: unknown family {family!r}; expected one of {FAMILIES}")
        try:
            weights[family] = float(weight)
        except ValueError:
            parser.error(f"--family-weights: {item!r} is not FAMILY=WEIGHT")
        if weights[family] <= 0:
            parser.error(f"--family-weights: {family}'s weight must be positive")
    return weights


def main(argv: Sequence[str] | None = None) -> None:
    print(train(parse_args(argv)))


if __name__ == "__main__":
    main()
