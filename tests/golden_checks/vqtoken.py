"""Golden checks for VQToken's clustering (shared/golden/README.md section 3).

Every hyper-parameter is read from the record. Seeds are injected from the stored init
indices (``init_indices``, or ``kmeans_runs[*].init_indices`` for the adaptive sweep and its
final fit) and the mean update runs with the reference's arithmetic (``exact=True``), so the
iteration counts, labels, chosen K and index map must match exactly, and centroids,
distortions and codebooks to the README tolerances (atol 1e-5).
"""

from __future__ import annotations

from typing import Any

import torch

from tokbench.methods.base import l2_normalize
from tokbench.methods.kmeans import (
    adaptive_kmeans,
    elbow_official,
    kmeans,
    official_elbow_index,
)

ATOL = 1e-5


def check_kmeans(record: dict[str, Any]) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    fit = kmeans(
        inputs["X"],
        int(inputs["num_clusters"]),
        max_iter=int(inputs["max_iteration"]),
        tol=float(inputs["tol"]),
        init_indices=outputs["init_indices"],
        exact=True,
    )
    assert torch.equal(fit.labels, outputs["labels"]), "labels differ"
    torch.testing.assert_close(fit.centroids, outputs["centroids"], atol=ATOL, rtol=0)
    assert fit.n_iter == int(outputs["n_iter"]) and fit.converged == bool(outputs["converged"])
    assert abs(fit.distortion - float(outputs["reference_distortion"])) <= 1e-4 * float(outputs["reference_distortion"])


def check_adaptive(record: dict[str, Any]) -> None:
    inputs, outputs, hparams = record["inputs"], record["outputs"], record["hparams"]
    tokens = inputs["tokens"]
    frames, per_frame, dim = tokens.shape
    runs = outputs["kmeans_runs"]
    ks = [int(run["K"]) for run in runs[:-1]]
    assert ks == list(range(ks[0], int(inputs["max_K"]) + 1)), "candidates are not k_min..max_K"
    result = adaptive_kmeans(
        l2_normalize(tokens.reshape(-1, dim)),
        ks,
        rule="elbow_official",
        max_iter=int(hparams["max_iteration"]),
        tol=float(hparams["tol"]),
        init_indices=[torch.tensor(run["init_indices"], dtype=torch.long) for run in runs],
        exact=True,
    )
    assert result.k == int(outputs["best_K"])
    assert [f.n_iter for f in result.fits] == [int(run["n_iter"]) for run in runs]
    torch.testing.assert_close(
        torch.tensor(result.distortions, dtype=torch.float64), outputs["distortions"], atol=0, rtol=1e-6
    )
    assert torch.equal(result.labels.view(frames, per_frame), outputs["cluster_indices"]), "index map differs"
    torch.testing.assert_close(result.codebook, outputs["cluster_means"], atol=ATOL, rtol=0)


def check_elbow(record: dict[str, Any]) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    distortions, ks = list(inputs["distortions"]), [int(k) for k in inputs["K_values"]]
    assert official_elbow_index(distortions) == int(outputs["compute_elbow"])
    assert elbow_official(distortions, ks) == int(outputs["best_K"])


CHECKS = {"vqtoken_kmeans": check_kmeans, "vqtoken_adaptive": check_adaptive, "vqtoken_elbow": check_elbow}
