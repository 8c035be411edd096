"""One leaderboard row from a cell's per-sample records: where every measured column is computed.

A cell's per-sample records (``runs/<cell_id>/samples.jsonl``: ``doc_id``, ``answer``, ``error``,
``score`` (0..1 or None), ``group`` (category labels), and the plugin's accounting) become:

- ``measured_columns``: ``metric``, ``n``, ``accuracy``, ``accuracy_lmms_eval`` (the task's own
  aggregation on the kept samples' logged values, 0..1), ``accuracy_by_group``, visual tokens,
  FLOPs (fvcore and paper convention), timings (median after the first sample), peak memory,
  ``errors``, ``first_error``, ``method_info``. Errored samples are excluded from every mean and
  counted in ``errors``; samples the task's metric leaves out (score None) are excluded from
  accuracy.
- ``compare``: paired statistics against the ``full`` baseline of the same model and task
  (``delta_vs_full``, ``agreement_with_full``, ``p_value_vs_full``);
- ``reduce_share``: ``reduce_share_of_saved_prefill``; ``tokdense``: accuracy points per token.

``group_scores`` is the one place per-group accuracy is computed (the row's ``accuracy_by_group``
and ``groups.md`` both use it). The identity columns (model, task, method, params, budget,
frames, seed, versions, cell_id, positions, prompt_key) come from the cell (``tokbench.harness.sweep``).
"""

from __future__ import annotations

import statistics
from typing import Any

from scipy.stats import binomtest

from tokbench.harness.flops import layer_flops
from tokbench.harness.scoring import lmms_aggregate, scoring_for


def group_labels(sample: dict[str, Any]) -> list[str]:
    """A sample's category labels (older logs store one label as a string)."""
    group = sample.get("group")
    if group is None:
        return []
    return [str(group)] if isinstance(group, str) else [str(label) for label in group]


def group_scores(samples) -> dict[str, list[float]]:
    """Scores per category label, over samples answered without error and scored."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        if sample.get("error") is None and sample.get("score") is not None:
            for label in group_labels(sample):
                groups.setdefault(label, []).append(float(sample["score"]))
    return dict(sorted(groups.items()))


def accuracy_by_group(samples) -> dict[str, float]:
    return {name: statistics.fmean(scores) for name, scores in group_scores(samples).items()}


def median_after_warmup(values: list[float]) -> float | None:
    """Median over samples, skipping the first (warm-up) when there are several."""
    values = [v for v in values if v is not None]
    if len(values) > 1:
        values = values[1:]
    return statistics.median(values) if values else None


def paper_tflops(layer_counts_mean: list[float], hidden: int, ffn: int) -> float:
    return sum(layer_flops(n, hidden, ffn) for n in layer_counts_mean) / 1e12


def mean_layer_counts(ok: list[dict]) -> list[float]:
    """Per-layer visual-token counts averaged over samples, for the paper FLOPs of the run."""
    counts = [s["layer_counts"] for s in ok if s.get("layer_counts")]
    if not counts:
        return []
    return [statistics.fmean(layer) for layer in zip(*counts)]


def summarise_info(infos: list[dict]) -> dict[str, Any]:
    """Numeric method metadata averaged over samples (e.g. the mean K an adaptive method chose)."""
    keys = {k for info in infos for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.fmean(info[k] for info in infos if k in info) for k in sorted(keys)}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def measured_columns(
    task: str, samples: list[dict[str, Any]], flops: list[int], flops_error: str | None, dims: dict[str, int]
) -> dict[str, Any]:
    """The row's measured columns from its per-sample records and its fvcore FLOPs measurements."""
    ok = [s for s in samples if s["error"] is None]
    scored = [s for s in ok if s["score"] is not None]
    layer_counts = mean_layer_counts(ok)
    return {
        "metric": scoring_for(task).metric,
        "n": len(scored),
        "accuracy": statistics.fmean(s["score"] for s in scored) if scored else None,
        "accuracy_lmms_eval": lmms_aggregate(task, [s["metric_value"] for s in ok]),
        "accuracy_by_group": accuracy_by_group(scored),
        "visual_tokens": _mean(s.get("visual_tokens") for s in ok),
        "visual_tokens_layer_avg": _mean(s.get("visual_tokens_layer_avg") for s in ok),
        "tflops_measured": statistics.fmean(flops) / 1e12 if flops else None,
        "tflops_paper": paper_tflops(layer_counts, dims["hidden"], dims["ffn"]) if layer_counts else None,
        "vision_ms": median_after_warmup([s.get("vision_ms") for s in ok]),
        "reduce_ms": median_after_warmup([s.get("reduce_ms") for s in ok]),
        "prefill_ms": median_after_warmup([s.get("prefill_ms") for s in ok]),
        "decode_tok_s": median_after_warmup([s.get("decode_tok_s") for s in ok]),
        "peak_mem_mb": max((s["peak_mem_mb"] for s in ok if s.get("peak_mem_mb") is not None), default=None),
        "errors": len(samples) - len(ok),
        "first_error": next((s["error"] for s in samples if s["error"]), flops_error),
        "method_info": summarise_info([s.get("method_info") or {} for s in ok]),
    }


def _norm(answer: str | None) -> str:
    return (answer or "").strip().lower()


def compare(method: dict[Any, dict], full: dict[Any, dict]) -> dict[str, float | None]:
    """Paired comparison on samples both runs answered and scored (exact McNemar p-value)."""
    common = [d for d in method if d in full and method[d]["error"] is None and full[d]["error"] is None]
    scored = [d for d in common if method[d]["score"] is not None and full[d]["score"] is not None]
    if not common:
        return {"delta_vs_full": None, "agreement_with_full": None, "p_value_vs_full": None}
    agree = sum(_norm(method[d]["answer"]) == _norm(full[d]["answer"]) for d in common) / len(common)
    if not scored:
        return {"delta_vs_full": None, "agreement_with_full": agree, "p_value_vs_full": None}
    delta = sum(method[d]["score"] - full[d]["score"] for d in scored) / len(scored)
    only_full = sum(full[d]["score"] >= 0.5 > method[d]["score"] for d in scored)
    only_method = sum(method[d]["score"] >= 0.5 > full[d]["score"] for d in scored)
    discordant = only_full + only_method
    p_value = binomtest(only_method, discordant, 0.5).pvalue if discordant else 1.0
    return {"delta_vs_full": delta, "agreement_with_full": agree, "p_value_vs_full": p_value}


def reduce_share(row: dict[str, Any], full: dict[str, Any]) -> float | None:
    """Reduction time / prefill time saved against ``full``; None when nothing is saved."""
    reduce_ms, prefill_ms, full_ms = row.get("reduce_ms"), row.get("prefill_ms"), full.get("prefill_ms")
    if None in (reduce_ms, prefill_ms, full_ms) or full_ms <= prefill_ms:
        return None
    return reduce_ms / (full_ms - prefill_ms)


def tokdense(row: dict[str, Any]) -> float | None:
    """Accuracy in percentage points per visual token entering the LLM (VQToken's TokDense)."""
    accuracy, tokens = row.get("accuracy"), row.get("visual_tokens")
    return 100.0 * accuracy / tokens if accuracy is not None and tokens else None
