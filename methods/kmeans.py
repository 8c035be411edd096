"""Spherical k-means as VQToken runs it, batched over candidate cluster counts.

Reference: Hai-chao-Zhang/VQToken at 019f89fd877fb7c28f771e8e33b4d3a34aa28e09.

* ``VQToken/cluster.py`` 7-74 ``KMeansTorch``: k-means++ seeding with EUCLIDEAN distances
  (14-44: one ``randint`` for the first seed, then ``multinomial`` on ``(d^2 + 1e-6) / sum``),
  Lloyd iterations with COSINE assignment (46-52: ``argmin(1 - Xn Cn^T)``, first index on
  ties), plain-mean update that keeps an empty cluster's old centroid and does not
  re-normalise (54-59), stop when ``||C - C'||_F < tol`` WITHOUT applying the update (61-70).
  The returned labels are the assignment at the start of the last iteration.
* ``VQToken/cluster.py`` 105-109 ``compute_elbow`` and 111-132 ``find_best_K``: distortion
  ``sum ||x - c_label||^2`` for K = 12..max_K, ``best_K = max(argmax(second difference of the
  float32 distortions) + 2 + 2, 12)``. That is an offset index, never mapped back to a K (a
  bug, reproduced as ``elbow_official``); 134-139: a fresh 22nd fit with the chosen K.
* ``VQToken/vq_token.py`` 6-53: tokens are L2-normalised, clustered jointly across frames,
  and the codebook is the per-cluster mean of the normalised tokens (``scatter_add``, counts
  clamped to 1, so an empty cluster gives a zero vector); labels are the index map [T, N].
* The later upstream fix (VQToken commit 22311db5f673b38f24dd78dbee1efdb1990fb86b,
  ``VQToken/cluster.py`` ``AdaptiveKMeansTorch.compute_elbow``) replaces the offset index
  by the candidate K whose (K, distortion) point, both axes min-max normalised, lies
  farthest from the chord between the first and last points (argmax, first on ties; fewer
  than three candidates give the first). That is the "knee" of Kneedle without its
  threshold test; it is ``elbow_chord`` here and the default rule ``elbow``. The same fix
  keeps the chosen candidate's fit instead of running a fresh one (done here too) and
  measures the distortion as summed cosine distance; here both rules read the released
  squared-Euclidean distortion, so ``rule`` changes only the rule.

What differs from the released code, and why:

* All candidate K are fitted at once (``kmeans_sweep``): each Lloyd iteration does one
  [sum K, N] matmul for every still-running candidate, and each candidate stops on its own
  criterion. With the same seeds it returns what separate ``kmeans`` fits return (checked bit
  for bit in the tests; a matmul's rounding may depend on its width, which could only matter
  at an exact tie). Seeding is incremental (running minimum distance, one matmul per step
  for all candidates) instead of a full ``cdist`` against every chosen seed per step.
* The mean update keeps running cluster sums corrected with the rows whose label changed,
  and the distortion comes from those sums in float64 (``sum|x|^2 - 2 sum_k c_k . S_k +
  sum_k n_k |c_k|^2``): the same values up to float rounding, at a fraction of the cost.
  ``exact=True`` instead runs the reference's own arithmetic (per-candidate [N, K] matmul and
  ``argmin``, per-cluster ``mean``, float32 distortion), bit-identical to the released code;
  the golden checks use it, the reducer does not need it.
* Seeds come from a ``torch.Generator`` passed in (or injected indices), never the global
  RNG. Candidates draw in lockstep: one ``randint`` for all first seeds, then one
  ``multinomial`` per step for the candidates that still need seeds.
* Zero vectors are left at zero by the normalisation instead of becoming NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tokbench.methods.base import l2_normalize

SEED_EPS = 1e-6
FRESH_SUMS_FRACTION = 8  # recompute the sums when more than 1/8 of the labels changed
ELBOW_RULES = ("elbow", "elbow_official")


@dataclass
class KMeansFit:
    """One k-means run: labels [N], centroids [K, D], the seeds used and how it stopped."""

    labels: torch.Tensor
    centroids: torch.Tensor
    init_indices: torch.Tensor
    n_iter: int
    converged: bool
    distortion: float


@dataclass
class AdaptiveFit:
    """Adaptive-K result: the chosen K, its labels and codebook, and the whole sweep."""

    k: int
    labels: torch.Tensor
    codebook: torch.Tensor
    candidates: list[int]
    distortions: list[float]
    fits: list[KMeansFit] = field(repr=False)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [P, N] from each of ``points`` [P, D] to every row of x."""
    cross = torch.mm(points, x.t())
    return (x_sq[None, :] + (points * points).sum(dim=1, keepdim=True) - 2 * cross).clamp_min_(0)


def kmeans_pp_init(x: torch.Tensor, ks: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
    """k-means++ seed indices for every K in ``ks`` (Euclidean D^2 + 1e-6 weighting), in lockstep."""
    n, count = x.shape[0], len(ks)
    k_arr = torch.tensor(list(ks), device=x.device)
    seeds = torch.zeros(count, max(ks), dtype=torch.long, device=x.device)
    seeds[:, 0] = torch.randint(0, n, (count,), generator=generator, device=x.device)
    x_sq = (x * x).sum(dim=1)
    nearest = _squared_distances(x, x_sq, x[seeds[:, 0]])
    for step in range(1, max(ks)):
        rows = torch.nonzero(k_arr > step).squeeze(1)
        weights = nearest[rows] + SEED_EPS
        picks = torch.multinomial(weights / weights.sum(dim=1, keepdim=True), 1, generator=generator).squeeze(1)
        seeds[rows, step] = picks
        nearest[rows] = torch.minimum(nearest[rows], _squared_distances(x, x_sq, x[picks]))
    return [seeds[i, :k] for i, k in enumerate(ks)]


def cosine_distances(x_unit: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``1 - x_unit @ normalize(centroids)^T`` [N, K], exactly the reference's expression."""
    sim = torch.mm(x_unit, l2_normalize(centroids).t())
    return sim.neg_().add_(1.0)


def assign(
    x_unit: torch.Tensor, centroid_sets: Sequence[torch.Tensor], exact: bool, buffer: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Nearest centroid (cosine, first index on ties) of every token, for each centroid set.

    Batched: one [sum K, N] matmul for all sets (into ``buffer`` rows if given) and a ``min``
    over each set's block. ``exact``: the reference's own ops, one [N, K] matmul and
    ``argmin`` per set (a matmul's rounding can depend on its width, so this is the
    bit-faithful path).
    """
    if exact:
        return [cosine_distances(x_unit, c).argmin(dim=1) for c in centroid_sets]
    centroids = l2_normalize(torch.cat(list(centroid_sets)))
    out = None if buffer is None else buffer[: centroids.shape[0]]
    dist = torch.mm(centroids, x_unit.t(), out=out).neg_().add_(1.0)
    return [block.min(dim=0).indices for block in torch.split(dist, [c.shape[0] for c in centroid_sets])]


def _reference_means(x: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-cluster ``mean(0)`` of the member rows in their original order: the reference's
    ``X[labels == i].mean(dim=0)`` bit for bit (same op on the same contiguous rows)."""
    members = x.index_select(0, torch.argsort(labels, stable=True))
    parts = torch.split(members, counts.tolist())
    zero = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.stack([part.mean(dim=0) if part.shape[0] else zero for part in parts])


class _Candidate:
    """Lloyd state of one candidate K inside a batched sweep.

    Fast mode keeps running cluster sums, corrected each iteration with the rows whose label
    changed (two small ``index_add_``; recomputed when many changed), so the means are the
    plain means up to float rounding. ``exact`` recomputes them with the reference's arithmetic instead (per-cluster
    ``mean`` calls, bit-identical to the released code, one copy of X per iteration).
    """

    def __init__(self, x: torch.Tensor, init_indices: torch.Tensor, exact: bool):
        self.init_indices = init_indices
        self.centroids = x[init_indices].clone()
        self.k = int(init_indices.numel())
        self.exact = exact
        self.n_iter = 0
        self.converged = False
        self.labels = torch.empty(0, dtype=torch.long, device=x.device)
        self.sums = torch.zeros_like(self.centroids)
        self.counts = torch.zeros(self.k, dtype=torch.long, device=x.device)

    def _update_sums(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Running sums: recomputed when many labels changed, else corrected with the moved rows."""
        moved = torch.nonzero(labels != self.labels).squeeze(1) if self.n_iter else None
        if moved is None or moved.numel() * FRESH_SUMS_FRACTION > labels.numel():
            self.sums.zero_().index_add_(0, labels, x)
        elif moved.numel():
            rows = x.index_select(0, moved)
            self.sums.index_add_(0, labels[moved], rows)
            self.sums.index_add_(0, self.labels[moved], rows, alpha=-1)

    def step(self, x: torch.Tensor, labels: torch.Tensor, tol: float) -> None:
        """Mean update for ``labels``; stop without updating if the centroids moved < tol."""
        counts = torch.bincount(labels, minlength=self.k)
        if self.exact:
            means = _reference_means(x, labels, counts)
        else:
            self._update_sums(x, labels)
            means = self.sums / counts.clamp_min(1).to(x.dtype)[:, None]
        updated = torch.where(counts[:, None] > 0, means, self.centroids)
        self.labels, self.counts = labels, counts
        self.n_iter += 1
        if torch.linalg.vector_norm(self.centroids - updated) < tol:
            self.converged = True
        else:
            self.centroids = updated

    def distortion(self, x: torch.Tensor, x_sq_total: float) -> float:
        """``sum ||x - c_label||^2``: the reference's float32 expression when exact, else the
        float64 expansion ``sum|x|^2 - 2 sum_k c_k . S_k + sum_k n_k |c_k|^2`` from the sums."""
        if self.exact:
            return float(((x - self.centroids[self.labels]) ** 2).sum())
        c = self.centroids.double()
        cross = float((c * self.sums.double()).sum())
        return x_sq_total - 2 * cross + float((self.counts.double() * (c * c).sum(dim=1)).sum())

    def result(self, x: torch.Tensor, x_sq_total: float) -> KMeansFit:
        return KMeansFit(
            self.labels, self.centroids, self.init_indices, self.n_iter, self.converged, self.distortion(x, x_sq_total)
        )


def lloyd(
    x: torch.Tensor, init_indices: Sequence[torch.Tensor], max_iter: int, tol: float, exact: bool = False
) -> list[KMeansFit]:
    """Lloyd iterations for several candidates at once: one matmul per iteration for all
    running candidates; each stops on its own ``||C - C'|| < tol`` or at ``max_iter``."""
    x_unit = l2_normalize(x)
    candidates = [_Candidate(x, idx.to(x.device), exact) for idx in init_indices]
    buffer = None if exact else x.new_empty(sum(c.k for c in candidates), x.shape[0])
    running = list(candidates)
    for _ in range(max_iter):
        if not running:
            break
        for cand, labels in zip(running, assign(x_unit, [c.centroids for c in running], exact, buffer)):
            cand.step(x, labels, tol)
        running = [c for c in running if not c.converged]
    x_sq_total = float((x.double() ** 2).sum())
    return [c.result(x, x_sq_total) for c in candidates]


def check_cluster_counts(ks: Sequence[int], n: int) -> None:
    if not ks:
        raise ValueError("no candidate cluster count")
    for k in ks:
        if not 1 <= int(k) <= n:
            raise ValueError(f"cannot make {k} clusters of {n} tokens (need 1 <= K <= {n})")


def kmeans_sweep(
    x: torch.Tensor,
    ks: Sequence[int],
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_indices: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    exact: bool = False,
) -> list[KMeansFit]:
    """k-means for every K in ``ks`` on the rows of ``x`` [N, D], fitted together.

    Seeds are ``init_indices`` (one index tensor per K) or drawn by k-means++ from
    ``generator`` (default: seed 0). ``exact`` uses the reference's arithmetic for the mean
    update (see ``_Candidate``).
    """
    check_cluster_counts(ks, x.shape[0])
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be at least 1")
    if init_indices is None:
        init_indices = kmeans_pp_init(x, ks, generator or seeded_generator(0, x.device))
    elif len(init_indices) != len(ks) or any(int(i.numel()) != int(k) for i, k in zip(init_indices, ks)):
        raise ValueError("init_indices must hold K seed indices for each candidate K")
    return lloyd(x, init_indices, max_iter, tol, exact)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_indices: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    exact: bool = False,
) -> KMeansFit:
    """One k-means fit (the reference ``KMeansTorch.fit``)."""
    seeds = None if init_indices is None else [torch.as_tensor(init_indices, dtype=torch.long)]
    return kmeans_sweep(x, [k], max_iter=max_iter, tol=tol, init_indices=seeds, generator=generator, exact=exact)[0]


def cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster mean of the rows of ``x`` [K, D]; an empty cluster gives a zero vector."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def official_elbow_index(distortions: Sequence[float]) -> int:
    """The reference ``compute_elbow``: argmax of the float32 second difference, plus 2."""
    d = torch.tensor(list(distortions), dtype=torch.float32)
    first = d[1:] - d[:-1]
    second = first[1:] - first[:-1]
    return int(second.argmax()) + 2


def elbow_official(distortions: Sequence[float], ks: Sequence[int]) -> int:
    """The released rule, offset bug included: ``max(compute_elbow + 2, k_min)``.

    Clamped to ``k_max`` as well, which only matters outside the released 12..32 range; with
    fewer than three candidates (no second difference) it returns ``k_min``.
    """
    if len(distortions) < 3:
        return int(ks[0])
    return min(max(official_elbow_index(distortions) + 2, int(ks[0])), int(ks[-1]))


def elbow_chord(distortions: Sequence[float], ks: Sequence[int]) -> int:
    """Upstream-fixed rule: the candidate K farthest from the chord of the normalised curve."""
    if len(distortions) < 3:
        return int(ks[0])
    points = torch.tensor(list(zip(ks, distortions)), dtype=torch.float64)
    low = points.amin(dim=0)
    points = (points - low) / (points.amax(dim=0) - low).clamp_min(1e-12)
    chord = points[-1] - points[0]
    length = torch.linalg.vector_norm(chord)
    if length <= 1e-12:
        return int(ks[0])
    rel = points - points[0]
    distance = (rel[:, 0] * chord[1] - rel[:, 1] * chord[0]).abs() / length
    return int(ks[int(distance.argmax())])


def choose_k(distortions: Sequence[float], ks: Sequence[int], rule: str) -> int:
    if rule == "elbow":
        return elbow_chord(distortions, ks)
    if rule == "elbow_official":
        return elbow_official(distortions, ks)
    raise ValueError(f"unknown elbow rule {rule!r}; expected one of {list(ELBOW_RULES)}")


def adaptive_kmeans(
    x_unit: torch.Tensor,
    ks: Sequence[int],
    *,
    rule: str = "elbow",
    max_iter: int = 100,
    tol: float = 1e-4,
    init_indices: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    exact: bool = False,
) -> AdaptiveFit:
    """Fit every candidate K, choose one by ``rule``, return its labels and codebook.

    ``elbow_official`` then runs a fresh fit with the chosen K, seeded by
    ``init_indices[len(ks)]`` or by the next draws of ``generator``, as the released code
    does; ``elbow`` keeps the chosen candidate's fit, as the upstream fix does.
    """
    ks = [int(k) for k in ks]
    generator = generator or seeded_generator(0, x_unit.device)
    sweep_seeds = None if init_indices is None else list(init_indices[: len(ks)])
    fits = kmeans_sweep(
        x_unit, ks, max_iter=max_iter, tol=tol, init_indices=sweep_seeds, generator=generator, exact=exact
    )
    distortions = [f.distortion for f in fits]
    k = choose_k(distortions, ks, rule)
    if rule == "elbow_official":
        final_seeds = None if init_indices is None else init_indices[len(ks)]
        final = kmeans(
            x_unit, k, max_iter=max_iter, tol=tol, init_indices=final_seeds, generator=generator, exact=exact
        )
        fits = fits + [final]
    else:
        final = fits[ks.index(k)]
    return AdaptiveFit(k, final.labels, cluster_means(x_unit, final.labels, k), ks, distortions, fits)
