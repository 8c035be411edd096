"""Golden checks for HoliTom: each checker runs ``tokbench.methods.holitom`` on a golden record's inputs
(the SigLIP score and the 2x2 pooling, which the model adapter computes, run the adapter's code).

Semantics and tolerances follow ../shared/golden/README.md section 2. Every shape and
hyper-parameter is read from the record (held-out sets use other shapes, windows, retain
ratios, inner r, hidden and batch sizes). Where the reference drew density noise, the stored
draws are replayed (``rng_noise`` / ``noise``) and, in addition, a ``torch.Generator`` seeded
with the record's ``torch_manual_seed`` must reproduce those draws and the same result: that
is the protocol the reducer's ``seed`` parameter relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tokbench.harness.blocks import received_attention
from tokbench.harness.models.llava_onevision import bilinear_pool
from tokbench.methods import holitom as ht

Record = dict[str, Any]
ATOL = 1e-5
RTOL = 1e-5


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual, expected), f"{what}: values differ"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def seeded(record: Record) -> torch.Generator:
    return torch.Generator().manual_seed(int(record["inputs"]["torch_manual_seed"]))


def assert_generator_replays(record: Record, draws: list[torch.Tensor]) -> None:
    """A generator seeded like ``torch.manual_seed`` reproduces the stored draws, in order."""
    generator = seeded(record)
    for i, draw in enumerate(draws):
        assert_exact(ht.draw_density_noise(draw.shape, generator, draw.device), draw, f"noise draw {i}")


def replay(draws: list[torch.Tensor]) -> ht.NoiseSource:
    return iter(list(draws))


def check_siglipattn(record: Record) -> None:
    """The adapter's blocked score on queries and keys that reproduce the stored probabilities:
    keys one-hot, queries the log-probabilities, scale 1, so softmax(q k^T) is the attention."""
    probs = record["inputs"]["attentions_last"]  # [T, heads, N, N], rows sum to 1
    keys = torch.eye(probs.shape[-1]).expand(*probs.shape[:2], -1, -1)
    score = received_attention(probs.clamp_min(1e-30).log(), keys, 1.0, block_elements=probs.shape[-1] * 7)
    assert_close(score, record["outputs"]["attn_weights"], "attn_weights", atol=1e-6)


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The adapter's 2x2 bilinear pooling on row-major square-grid tokens [T, N, C] or a map [T, N]."""
    grid = tokens.unsqueeze(-1) if tokens.ndim == 2 else tokens
    frames, count, channels = grid.shape
    side = math.isqrt(count)
    pooled = bilinear_pool(grid.reshape(frames, side, side, channels)).reshape(frames, -1, channels)
    return pooled.squeeze(-1) if tokens.ndim == 2 else pooled


def check_pool(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    assert int(record["hparams"].get("stride", 2)) == 2, "LLaVA-OV pools 2x2"
    assert_close(pool_tokens(inputs["image_feat"]), outputs["pooled_image_feat"], "pooled_image_feat")
    assert_close(pool_tokens(inputs["attn_weights"]), outputs["pooled_attn"], "pooled_attn")


def check_dp(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    similarity, tau = inputs["feature_sim"], float(inputs["tau"])
    windows, reduced = ht.select_static_windows(similarity, int(inputs["batch_size"]), tau, int(inputs["max_window_size"]))
    assert [list(w) for w in windows] == outputs["selected_frames_list"], f"windows {windows}"
    assert_exact(torch.tensor(windows, dtype=torch.long).reshape(-1, 2), outputs["selected_frames"], "selected_frames")
    assert reduced == outputs["total_reduced"], f"total_reduced {reduced} != {outputs['total_reduced']}"
    assert_exact(ht.window_gain_matrix(similarity, tau), outputs["pruned_static_count"], "pruned_static_count")


def check_split(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    windows = [tuple(w) for w in inputs["selected_frames"]]
    parts = ht.split_static_dynamic(inputs["image_feat"], inputs["attn_weights"], windows, inputs["feature_sim"], float(inputs["tau"]))
    assert_exact(torch.stack([p.static_mask for p in parts]), outputs["static_mask"], "static_mask")
    for i, part in enumerate(parts):
        assert_close(part.static_feat, outputs["static_feat"][i], f"window {i} static_feat")
        assert_exact(part.static_pos, outputs["static_pos"][i].reshape(-1).long(), f"window {i} static_pos")
        assert_exact(part.dynamic_feat, outputs["dynamic_feat"][i], f"window {i} dynamic_feat")
        assert_exact(part.dynamic_attn, outputs["dynamic_attn"][i], f"window {i} dynamic_attn")
        assert_exact(part.dynamic_pos.expand(part.size, -1), outputs["dynamic_pos"][i], f"window {i} dynamic_pos")


def check_dpc(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    assert_generator_replays(record, [outputs["noise"]])
    result = ht.cluster_dpc_knn(inputs["x"], int(inputs["cluster_num"]), int(inputs["k"]), outputs["noise"])
    assert_exact(result.centres, outputs["index_center"], "index_center (top-k order)")
    assert_exact(result.centres.sort(dim=-1).values, outputs["index_center_sorted"], "index_center_sorted")
    assert_close(result.dist_matrix, outputs["dist_matrix"], "dist_matrix")
    assert_close(result.density, outputs["density_with_noise"], "density_with_noise")
    assert_close(result.delta, outputs["dist"], "dist")
    assert_close(result.score, outputs["score"], "score")
    generated = ht.cluster_dpc_knn(inputs["x"], int(inputs["cluster_num"]), int(inputs["k"]), seeded(record))
    assert_exact(generated.centres, outputs["index_center"], "index_center with a seeded generator")


def check_mergeclust(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    assert inputs["target_indices"].shape[1] == int(inputs["cluster_num"])
    merged, assignment = ht.merge_into_centres(inputs["feat"], inputs["target_indices"], inputs["dist_matrix"], float(inputs["Beta"]))
    assert_close(merged, outputs["cluster_tokens"], "cluster_tokens")
    assert_exact(assignment, outputs["non_target_assignment"], "non_target_assignment")


def check_density(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    draws = outputs["rng_noise"]
    count, ratio = inputs["feat"].shape[1], float(inputs["retain_ratio"])
    assert ht.python_round(count * ratio) == outputs["cluster_num"], "cluster_num"
    assert_generator_replays(record, draws)
    for label, noise in (("replayed", replay(draws)), ("seeded", seeded(record))):
        feat, pos = ht.merge_tokens_by_density(inputs["feat"], inputs["pos"], ratio, float(inputs["Beta"]), int(inputs["K"]), noise)
        assert_exact(pos, outputs["image_pos"].long(), f"image_pos ({label} noise)")
        assert_close(feat, outputs["image_feat"], f"image_feat ({label} noise)")


def check_attnsel(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    assert float(inputs["D"]) == 0.0, "only D=0 is defined (the reference crashes for D>0)"
    feat, pos = ht.select_by_attention(inputs["feat"], inputs["attn"], inputs["pos"], float(inputs["retain_ratio"]))
    assert feat.shape[1] == outputs["dominant_num"], "dominant_num"
    assert_exact(feat, outputs["image_feat"], "image_feat")
    assert_exact(pos.to(outputs["image_pos"].dtype), outputs["image_pos"], "image_pos")


def window_from_segment_inputs(inputs: Record) -> ht.Window:
    size = int(inputs["window_size"])
    static_pos = inputs["static_pos"].reshape(-1).long()
    dynamic_pos = inputs["dynamic_pos"]
    count = static_pos.numel() + dynamic_pos.shape[1]
    assert torch.equal(dynamic_pos, dynamic_pos[:1].expand_as(dynamic_pos)), "dynamic positions differ across frames"
    mask = torch.zeros(count, dtype=torch.bool).index_fill_(0, static_pos, True)
    return ht.Window(
        start=0,
        end=size - 1,
        static_mask=mask,
        static_feat=inputs["static_feat"],
        static_pos=static_pos,
        dynamic_feat=inputs["dynamic_feat"],
        dynamic_attn=inputs["dynamic_attn"],
        dynamic_pos=dynamic_pos[0],
    )


def check_segment(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    assert float(inputs["D"]) == 0.0, "only D=0 is defined"
    window = window_from_segment_inputs(inputs)
    count = window.static_mask.numel()
    draws = outputs["rng_noise"]
    assert_generator_replays(record, draws)
    common = {"num_positions": count, "beta": float(inputs["Beta"]), "knn": int(inputs["K"])}
    ratio = float(inputs["retain_ratio"])
    for label, make_noise in (("replayed", lambda: replay(draws)), ("seeded", lambda: seeded(record))):
        flat = ht.reduce_window(window, ratio, noise=make_noise(), **common)
        assert_close(flat.tokens, outputs["feat_flat"], f"feat_flat ({label} noise)")
        grid = ht.reduce_window(
            window, ratio, noise=make_noise(), newline=inputs["image_newline"], grid_width=math.isqrt(count), **common
        )
        assert_close(grid.tokens, outputs["feat_grid"], f"feat_grid ({label} noise)")


def run_outer(record: Record, features: torch.Tensor, attention: torch.Tensor, noise: ht.NoiseSource) -> ht.OuterResult:
    hp, inputs = record["hparams"], record["inputs"]
    assert float(hp["D"]) == 0.0, "only D=0 is defined"
    grid = hp["mm_newline_position"] == "grid"
    return ht.outer_stage(
        features,
        attention,
        float(hp["retain_ratio"]),
        float(hp["tau"]),
        max_window=int(hp["max_window_size"]),
        beta=float(hp["Beta"]),
        knn=int(hp["K"]),
        noise=noise,
        newline=inputs["image_newline"] if grid else None,
    )


def check_outer_result(record: Record, features: torch.Tensor, attention: torch.Tensor) -> None:
    outputs = record["outputs"]
    draws = outputs["rng_noise"]
    assert_generator_replays(record, draws)
    stored = iter(list(draws))
    result = run_outer(record, features, attention, stored)
    assert next(stored, None) is None, "not every stored noise draw was used"
    assert [list(w) for w in result.windows] == outputs["selected_frames"].tolist(), f"windows {result.windows}"
    assert result.total_reduced == outputs["total_reduced"], "total_reduced"
    assert result.retain_adjusted == outputs["retain_ratio_adjusted"], "retain_ratio_adjusted"
    assert_close(result.feature_sim, outputs["feature_sim"], "feature_sim")
    assert result.tokens.shape[0] == outputs["num_tokens"], f"num_tokens {result.tokens.shape[0]} != {outputs['num_tokens']}"
    assert_close(result.tokens, outputs["video_tokens"], "video_tokens")
    if "static_masks" in outputs:
        assert_exact(result.static_masks, outputs["static_masks"], "static_masks")
    if "segment_lengths" in outputs:
        assert result.segment_lengths == outputs["segment_lengths"], "segment_lengths"
    generated = run_outer(record, features, attention, seeded(record))
    assert_exact(generated.tokens, result.tokens, "video_tokens with a seeded generator")


def check_outer(record: Record) -> None:
    inputs = record["inputs"]
    check_outer_result(record, inputs["pooled_image_feat"], inputs["attn_weights"])


def check_outerfull(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    features = pool_tokens(inputs["image_feat"])
    attention = pool_tokens(inputs["attn_weights"])
    assert_close(attention, outputs["pooled_attn"], "pooled_attn")
    check_outer_result(record, features, attention)


def check_inner(record: Record) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    hidden = inputs["hidden_states"]
    start, length = int(inputs["image_token_start_index"]), int(inputs["image_token_length"])
    seq_len = int(inputs["seq_length_with_past"])
    span = (start, start + length)
    scores = ht.last_query_scores(inputs["last_layer_attention"][0, :, -1], span)
    merge = ht.inner_merge(hidden[:, span[0] : span[1]], scores, float(inputs["HOLITOM_r"]))
    assert merge.keep.numel() == outputs["num_kept_image_tokens"], "num_kept_image_tokens"
    assert_exact(merge.top + start, outputs["top_attention_rank_index"], "top_attention_rank_index")
    assert_exact(merge.dropped + start, outputs["non_topk_indices"], "non_topk_indices")
    assert_exact(merge.target, outputs["sim_max_index"], "sim_max_index")
    keep = torch.cat([torch.arange(start), merge.keep + start, torch.arange(span[1], seq_len)])
    assert_exact(keep, outputs["keep_indexs"], "keep_indexs")
    assert_exact(keep[None], outputs["position_ids"], "position_ids")
    merged = hidden.clone()
    merged[:, merge.keep + start] = merge.hidden
    assert_close(merged[:, keep], outputs["hidden_states"], "hidden_states")


CHECKS: dict[str, Callable[[Record], None]] = {
    "holitom_siglipattn": check_siglipattn,
    "holitom_pool": check_pool,
    "holitom_dp": check_dp,
    "holitom_split": check_split,
    "holitom_dpc": check_dpc,
    "holitom_mergeclust": check_mergeclust,
    "holitom_density": check_density,
    "holitom_attnsel": check_attnsel,
    "holitom_segment": check_segment,
    "holitom_outer": check_outer,
    "holitom_outerfull": check_outerfull,
    "holitom_inner": check_inner,
}
