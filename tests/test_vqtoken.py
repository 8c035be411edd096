"""VQToken / Token Dynamics behaviour: batched k-means, adaptive K, attention mode, budgets."""

from __future__ import annotations

import pytest
import torch

from tokbench.methods.base import BudgetError, MethodError, VideoTokens, l2_normalize
from tokbench.methods.kmeans import (
    adaptive_kmeans,
    cluster_means,
    elbow_chord,
    elbow_official,
    kmeans,
    kmeans_pp_init,
    kmeans_sweep,
    seeded_generator,
)
from tokbench.methods.registry import build_reducer
from tokbench.methods.vqtoken import (
    VQ_ATTENTION_FILE,
    VQAttention,
    load_vq_attention,
    save_vq_attention,
)

DIM = 16


def blobs(n: int = 240, dim: int = DIM, centers: int = 6, seed: int = 0) -> torch.Tensor:
    gen = seeded_generator(seed)
    directions = torch.randn(centers, dim, generator=gen)
    x = directions[torch.arange(n) % centers] + 0.4 * torch.randn(n, dim, generator=gen)
    return l2_normalize(x)


def video(
    frames: int = 3, side: int = 5, dim: int = DIM, seed: int = 0, checkpoint_dir: str | None = None
) -> VideoTokens:
    gen = seeded_generator(seed)
    directions = torch.randn(8, dim, generator=gen)
    owner = torch.randint(0, 8, (frames, side, side), generator=gen)
    unpooled = 3.0 * directions[owner] + torch.randn(frames, side, side, dim, generator=gen)
    pooled = unpooled[:, ::2, ::2]
    return VideoTokens(pooled, newline=torch.zeros(dim), unpooled_fn=lambda: unpooled, checkpoint_dir=checkpoint_dir)


@pytest.mark.parametrize("exact", [False, True])
def test_batched_sweep_equals_sequential_fits(exact):
    x = blobs()
    ks = list(range(12, 21))  # the widths of the real sweep (12..32)
    seeds = kmeans_pp_init(x, ks, seeded_generator(5))
    batched = kmeans_sweep(x, ks, init_indices=seeds, exact=exact, max_iter=50)
    for k, seed, fit in zip(ks, seeds, batched):
        single = kmeans(x, k, init_indices=seed, exact=exact, max_iter=50)
        assert torch.equal(fit.labels, single.labels)
        assert torch.equal(fit.centroids, single.centroids)
        assert (fit.n_iter, fit.converged, fit.distortion) == (single.n_iter, single.converged, single.distortion)


def test_max_iter_stops_candidates_and_returns_the_last_update():
    fit = kmeans(blobs(), 8, max_iter=1, init_indices=torch.arange(8))
    assert fit.n_iter == 1 and not fit.converged
    assert not torch.equal(fit.centroids, blobs()[:8])


def test_seeding_is_deterministic_per_seed():
    x = blobs()
    a = kmeans_pp_init(x, [4, 9], seeded_generator(3))
    b = kmeans_pp_init(x, [4, 9], seeded_generator(3))
    c = kmeans_pp_init(x, [4, 9], seeded_generator(4))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert [s.numel() for s in a] == [4, 9]


def test_cluster_means_and_empty_clusters():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    means = cluster_means(x, torch.tensor([0, 2, 0]), 3)
    assert torch.equal(means, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))


def test_elbow_rules():
    ks = list(range(20, 27))
    curve = [100.0, 78.0, 58.0, 41.0, 37.0, 35.0, 34.0]
    assert elbow_chord(curve, ks) == 23
    assert elbow_official(curve, ks) == 20  # the offset index, clamped to k_min
    kinked = [1000.0 - 60 * min(k, 14) - 5 * k for k in range(12, 33)]
    assert elbow_chord(kinked, list(range(12, 33))) == 14
    assert elbow_official(kinked, list(range(12, 33))) == 12
    assert elbow_chord([5.0, 4.0], [3, 4]) == 3 and elbow_official([5.0, 4.0], [3, 4]) == 3


def test_adaptive_k_is_a_candidate_and_reported():
    fit = adaptive_kmeans(blobs(centers=6), list(range(2, 12)), generator=seeded_generator(0))
    assert fit.k in fit.candidates and fit.codebook.shape == (fit.k, DIM)
    assert len(fit.fits) == len(fit.candidates) == len(fit.distortions)
    official = adaptive_kmeans(blobs(), list(range(2, 12)), rule="elbow_official", generator=seeded_generator(0))
    assert len(official.fits) == 11 and official.fits[-1].centroids.shape[0] == official.k


def test_reducer_adaptive_default_reports_k():
    out = build_reducer("vqtoken", {"k_min": 3, "k_max": 9}).reduce_visual(video())
    assert 3 <= out.info["k"] <= 9 and out.info["rule"] == "elbow" and out.info["mode"] == "centroids"
    assert out.count == out.info["k_used"] + 1
    assert torch.all(out.source_positions[:-1] == -1) and out.source_positions[-1] == 27
    assert torch.equal(out.embeddings[-1], torch.zeros(DIM))
    assert bool((out.embeddings[:-1].norm(dim=1) <= 1 + 1e-5).all())


def test_budgets_fix_k():
    v = video()
    assert build_reducer("vqtoken", {"tokens": 7}).reduce_visual(v).info["k"] == 7
    assert build_reducer("vqtoken", {"retain": 0.25}).reduce_visual(v).info["k"] == round(0.25 * 27)
    capped = build_reducer("vqtoken", {"tokens": 8, "k": "auto", "k_min": 3}).reduce_visual(v)
    assert capped.info["candidates"] == [3, 8]
    with pytest.raises(BudgetError):
        build_reducer("vqtoken", {"tokens": 28}).reduce_visual(v)
    with pytest.raises(BudgetError):
        build_reducer("vqtoken", {"tokens": 5, "k": 6})
    with pytest.raises(BudgetError):
        build_reducer("vqtoken", {"tokens": 5, "k": "auto"}).reduce_visual(v)


def test_bad_parameters():
    with pytest.raises(MethodError):
        build_reducer("vqtoken", {"k": 0})
    with pytest.raises(MethodError):
        build_reducer("vqtoken", {"k_min": 10, "k_max": 9})
    with pytest.raises(MethodError):
        build_reducer("vqtoken", {"k": 76}).reduce_visual(video())
    with pytest.raises(MethodError):
        build_reducer("vqtoken", {"positions": "original"})
    with pytest.raises(MethodError):
        build_reducer("vqtoken", {"rule": "silhouette"})


def test_zero_and_duplicate_tokens_stay_finite_and_drop_empty_clusters():
    zeros = torch.zeros(2, 4, 4, DIM)
    v = VideoTokens(zeros[:, ::2, ::2], unpooled_fn=lambda: zeros)
    out = build_reducer("vqtoken", {"k": 5}).reduce_visual(v)
    assert torch.isfinite(out.embeddings).all() and out.info["k_used"] == 1
    few = torch.randn(3, DIM, generator=seeded_generator(2))[torch.arange(32) % 3].reshape(2, 4, 4, DIM)
    v = VideoTokens(few[:, ::2, ::2], unpooled_fn=lambda: few)
    out = build_reducer("vqtoken", {"k": 6}).reduce_visual(v)
    assert torch.isfinite(out.embeddings).all() and out.info["k_used"] == 3 and out.count == 3


def test_rescale_matches_mean_input_norm():
    v = video()
    out = build_reducer("vqtoken", {"k": 4, "rescale": True}).reduce_visual(v)
    mean_norm = v.unpooled().reshape(-1, DIM).norm(dim=1).mean()
    torch.testing.assert_close(out.embeddings[:-1].norm(dim=1), mean_norm.expand(out.count - 1))


def test_rescale_in_attention_mode_scales_the_module_memory():
    v = video()
    module = VQAttention(25, DIM, rescaled_memory=True)
    module.reset_parameters(seeded_generator(9))
    memories = []
    module.register_forward_hook(lambda _m, inputs, _out: memories.append(inputs[1]))
    reducer = build_reducer("token_dynamics", {"k": 4, "rescale": True})
    reducer.attach_attention(module)
    reducer.reduce_visual(v)
    mean_norm = v.unpooled().reshape(-1, DIM).norm(dim=1).mean()
    torch.testing.assert_close(memories[0].norm(dim=1), mean_norm.expand(4))


def test_same_seed_same_output():
    a = build_reducer("vqtoken", {"k_min": 3, "k_max": 9, "seed": 1}).reduce_visual(video())
    b = build_reducer("vqtoken", {"k_min": 3, "k_max": 9, "seed": 1}).reduce_visual(video())
    assert torch.equal(a.embeddings, b.embeddings) and a.info == b.info


def test_attention_mode_refuses_without_weights():
    with pytest.raises(MethodError, match="needs trained VQ-Attention weights"):
        build_reducer("token_dynamics", {"k": 4}).reduce_visual(video())
    with pytest.raises(MethodError, match="needs trained VQ-Attention weights"):
        build_reducer("vqtoken", {"k": 4, "mode": "attention"}).reduce_visual(video())


@pytest.mark.parametrize(("frames", "k"), [(3, 7), (6, 4)])
def test_attention_mode_with_random_weights_has_max_t_k_tokens(frames, k):
    params = {"k": k, "allow_random_weights": True}
    out = build_reducer("token_dynamics", params).reduce_visual(video(frames=frames))
    assert out.count == max(frames, k) + 1
    assert out.info["random_weights"] is True and out.info["mode"] == "attention"
    again = build_reducer("token_dynamics", params).reduce_visual(video(frames=frames))
    assert torch.equal(out.embeddings, again.embeddings)


def test_attention_output_above_the_budget_raises():
    reducer = build_reducer("token_dynamics", {"tokens": 4, "allow_random_weights": True})
    with pytest.raises(BudgetError, match="max"):
        reducer.reduce_visual(video(frames=6))


def test_trained_weights_round_trip_and_are_loaded_from_the_checkpoint(tmp_path):
    module = VQAttention(25, DIM)
    module.reset_parameters(seeded_generator(9))
    save_vq_attention(module, tmp_path)
    loaded = load_vq_attention(tmp_path, DIM, 25)
    index_map, codebook = torch.randint(0, 4, (3, 25)).float(), torch.randn(4, DIM)
    module.eval()
    # loaded weights are frozen, so torch may take its fused inference path: equal up to rounding
    torch.testing.assert_close(loaded(index_map, codebook), module(index_map, codebook))
    out = build_reducer("token_dynamics", {"k": 4}).reduce_visual(video(checkpoint_dir=str(tmp_path)))
    assert out.info["random_weights"] is False and out.count == 5
    with pytest.raises(MethodError):
        load_vq_attention(tmp_path, DIM, 729)
    assert (tmp_path / VQ_ATTENTION_FILE).is_file()


def test_weights_trained_on_a_rescaled_codebook_set_the_default_and_refuse_the_other(tmp_path):
    module = VQAttention(25, DIM, rescaled_memory=True)
    module.reset_parameters(seeded_generator(9))
    save_vq_attention(module, tmp_path)
    assert load_vq_attention(tmp_path, DIM, 25).rescaled_memory is True
    with pytest.raises(MethodError, match="run with rescale=true"):
        build_reducer("token_dynamics", {"k": 4, "rescale": "false"}).reduce_visual(video(checkpoint_dir=str(tmp_path)))
    with pytest.raises(MethodError, match="run with rescale=true"):
        build_reducer("token_dynamics", {"k": 4, "rescale": "false"}).check_checkpoint(str(tmp_path))
    default = build_reducer("token_dynamics", {"k": 4}).reduce_visual(video(checkpoint_dir=str(tmp_path)))
    given = build_reducer("token_dynamics", {"k": 4, "rescale": True}).reduce_visual(video(checkpoint_dir=str(tmp_path)))
    assert default.info["random_weights"] is False and default.info["rescale"] is True
    assert torch.equal(default.embeddings, given.embeddings)
    centroids = build_reducer("vqtoken", {"k": 4}).reduce_visual(video(checkpoint_dir=str(tmp_path)))
    assert centroids.info["rescale"] is False  # the weights' record applies to attention mode only


def test_attention_mode_refuses_before_clustering(monkeypatch):
    import tokbench.methods.vqtoken as vq

    def no_clustering(*args, **kwargs):
        raise AssertionError("clustered before checking the weights")

    monkeypatch.setattr(vq, "kmeans", no_clustering)
    monkeypatch.setattr(vq, "adaptive_kmeans", no_clustering)
    with pytest.raises(MethodError, match="needs trained VQ-Attention weights"):
        build_reducer("token_dynamics").reduce_visual(video())
    with pytest.raises(MethodError, match="needs trained VQ-Attention weights"):
        build_reducer("vqtoken", {"mode": "attention"}).check_checkpoint(None)
    build_reducer("token_dynamics", {"allow_random_weights": True}).check_checkpoint(None)
    build_reducer("vqtoken").check_checkpoint(None)


def test_random_attention_weights_are_inference_weights():
    reducer = build_reducer("token_dynamics", {"k": 4, "allow_random_weights": True})
    reducer.reduce_visual(video())
    module, random_weights = reducer._attention
    assert random_weights and not any(p.requires_grad for p in module.parameters())


def test_registry_names_share_code_and_differ_in_mode():
    vq, td = build_reducer("vqtoken"), build_reducer("token_dynamics")
    assert vq.values["mode"] == "centroids" and td.values["mode"] == "attention"
    assert type(vq).needs_unpooled and type(td).needs_unpooled


def test_paper_flops_for_k12_on_ov05b():
    layers, d, m = 24, 896, 4864
    ((stage_layers, n),) = build_reducer("vqtoken", {"k": 12}).token_schedule(32 * 196, layers)
    flops = stage_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert n == 12 and round(flops / 1e12, 4) == 0.0034
    assert build_reducer("vqtoken").token_schedule(6272, layers) == [(layers, 32)]
