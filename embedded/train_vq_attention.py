"""Fine-tune a LLaVA-OneVision checkpoint with VQToken's VQ-Attention in the loop.

``python -m embedded.train_vq_attention --base checkpoints/tiny-llava-ov-synthvqa
--out checkpoints/tiny-llava-ov-synthvqa-vqtoken`` trains on SynthVQA train what
``vqtoken mode=attention`` (and ``token_dynamics``) evaluate: the video's un-pooled tokens go
through the registered reducer itself (k-means codebook + index map -> VQ-Attention ->
max(T, K) tokens + newline), are spliced into the prompt by the model adapter exactly as at
evaluation, and the loss is cross-entropy on the answer letter and end-of-turn token.

As in the paper (arXiv 2503.16980 v6, Sec. 4: the whole VLM is fine-tuned with the module for
one epoch), ``--train all`` (default) updates the vision tower, projector, language model and
VQ-Attention; ``--train attention`` freezes the VLM and trains only the module. K is drawn
per step from ``--k-min..--k-max`` (the adaptive range of the released code, 12..32), so one
module serves fixed and adaptive K. The k-means assignment is not differentiable; gradients
reach the features through the codebook (cluster means of the normalised tokens) and through
the module. The output folder holds the (fine-tuned) model, its processor and tokenizer,
``vq_attention.safetensors`` and ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedded.train_tiny import (
    add_loop_args,
    chat_prompt,
    finish_args,
    learning_rate,
    permuted_questions,
)
from tokbench.harness.models.llava_onevision import LlavaOnevisionAdapter
from tokbench.methods.kmeans import seeded_generator
from tokbench.methods.registry import build_reducer
from tokbench.methods.vqtoken import VQAttention, save_vq_attention
from tokbench.tasks.synthvqa.generate import FAMILIES, Sample, render_spec, sample_specs

# Train samples for this stage start here, after those the base model's training used.
TRAIN_SEED_OFFSET = 10_000_000


def letter_and_end_logits(adapter: LlavaOnevisionAdapter, reducer, sample: Sample, questions) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [Q, 2, V] predicting each question's answer letter and end of turn, and their targets."""
    pixels = adapter.pixel_values(sample.frames)
    video = adapter.encode_video(pixels)
    reduced = reducer.reduce_visual(video)
    end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
    embeds, positions, targets = [], [], []
    for options, answer in questions:
        prompt = chat_prompt(adapter.tokenizer, sample.question, options) + answer + "<|im_end|>"
        prepared = adapter.prepare_prompt(prompt, reduced, video, "compact")
        embeds.append(prepared.embeds)
        positions.append(prepared.position_ids)
        targets.append([adapter.tokenizer.convert_tokens_to_ids(answer), end])
    hidden = adapter.model.model.language_model(
        inputs_embeds=torch.cat(embeds), position_ids=torch.cat(positions), use_cache=False
    ).last_hidden_state
    return adapter.model.lm_head(hidden[:, -3:-1]), torch.tensor(targets)


@torch.no_grad()
def evaluate(adapter, module: VQAttention, samples: Sequence[Sample], k: int) -> dict[str, float]:
    """Greedy first-token accuracy with VQ-Attention at a fixed ``k``, overall and per family."""
    adapter.model.eval()
    module.eval()
    reducer = build_reducer("vqtoken", {"mode": "attention", "k": k, "rescale": module.rescaled_memory})
    reducer.attach_attention(module)
    hits: dict[str, list[float]] = {family: [] for family in FAMILIES}
    for sample in samples:
        logits, targets = letter_and_end_logits(adapter, reducer, sample, [(sample.options, sample.answer)])
        hits[sample.family].append(float(int(logits[0, 0].argmax()) == int(targets[0, 0])))
    scores = {f"acc_{family}": sum(h) / len(h) for family, h in hits.items() if h}
    scores["accuracy"] = sum(sum(h) for h in hits.values()) / len(samples)
    return scores


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    adapter = LlavaOnevisionAdapter(str(args.base), device="cpu", dtype="float32")
    model = adapter.model
    dim = model.config.text_config.hidden_size
    grid = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    module = VQAttention(grid, dim, ffn=args.ffn, rescaled_memory=bool(args.rescale))
    module.reset_parameters(seeded_generator(args.seed))
    groups = [{"params": list(module.parameters()), "lr": args.lr_attention}]
    if args.train == "all":
        groups.append({"params": list(model.parameters()), "lr": args.lr_model})
    else:
        model.requires_grad_(False)
    peaks = [group["lr"] for group in groups]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    val = [render_spec(s, args.frames) for s in sample_specs("val", args.val_count)]
    specs = sample_specs("train", args.steps * args.batch, seed=TRAIN_SEED_OFFSET)
    log: list[dict] = []
    started, running = time.time(), 0.0
    for step in range(args.steps):
        model.train(args.train == "all")
        module.train()
        k = int(rng.integers(args.k_min, args.k_max + 1))
        reducer = build_reducer("vqtoken", {"mode": "attention", "k": k, "seed": step, "rescale": module.rescaled_memory})
        reducer.attach_attention(module)
        logits, targets = [], []
        for _ in range(args.batch):
            sample = render_spec(next(specs), args.frames)
            out, target = letter_and_end_logits(adapter, reducer, sample, permuted_questions(sample, args.permutations, rng))
            logits.append(out)
            targets.append(target)
        loss = F.cross_entropy(torch.cat(logits).flatten(0, 1), torch.cat(targets).flatten())
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = learning_rate(step, args.steps, peak, args.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            entry = {"step": done, "k": k, "loss": round(running, 4), "minutes": round((time.time() - started) / 60, 2)}
            if done % args.eval_every == 0 or done == args.steps:
                entry["val"] = {key: round(v, 4) for key, v in evaluate(adapter, module, val, args.eval_k).items()}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    write_checkpoint(args, adapter, module, log, time.time() - started)
    return Path(args.out)


def write_checkpoint(args: argparse.Namespace, adapter, module: VQAttention, log: list[dict], seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.train == "all":
        adapter.model.eval().save_pretrained(out)
        adapter.processor.save_pretrained(out)
    else:  # the VLM is unchanged: copy its files
        for path in Path(args.base).iterdir():
            if path.is_file() and path.name not in ("training.json", "README.md", "vq_attention.safetensors"):
                shutil.copy2(path, out / path.name)
    save_vq_attention(module.eval(), out)
    summary = {
        "command": "python -m embedded.train_vq_attention " + " ".join(args.argv),
        "base": str(args.base),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "argv")},
        "attention_parameters": sum(p.numel() for p in module.parameters()),
        "train_samples": args.steps * args.batch,
        "minutes": round(seconds / 60, 1),
        "final_val": log[-1].get("val") if log else None,
        "log": log,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune a LLaVA-OneVision checkpoint with VQToken's VQ-Attention.")
    parser.add_argument("--base", type=Path, required=True, help="checkpoint folder to start from")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--train", choices=("all", "attention"), default="all", help="all: whole VLM + module (the paper)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=4, help="videos per step")
    parser.add_argument("--k-min", type=int, default=12)
    parser.add_argument("--k-max", type=int, default=32)
    parser.add_argument("--eval-k", type=int, default=32)
    parser.add_argument(
        "--rescale",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: the codebook is scaled to the token norm before the module (vqtoken rescale=true; evaluate alike)",
    )
    parser.add_argument("--ffn", type=int, default=512, help="feed-forward width of the module (released: 2048)")
    parser.add_argument("--lr-attention", type=float, default=1e-3)
    parser.add_argument("--lr-model", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=20)
    add_loop_args(parser, log_every=10, eval_every=100, val_count=60)
    args = finish_args(parser, argv)
    if not 1 <= args.k_min <= args.k_max:
        parser.error("need 1 <= --k-min <= --k-max")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    print(train(parse_args(argv)))


if __name__ == "__main__":
    main()
