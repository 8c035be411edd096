"""VQToken / Token Dynamics: a whole video as a small k-means codebook (+ index map).

Paper: arXiv 2503.16980. v1-v3 (March 2025) "Token Dynamics: Towards Efficient and Dynamic
Video Token Representation for Video Large Language Models"; v6 (NeurIPS 2025) "VQToken:
Neural Discrete Token Representation Learning for Extreme Token Reduction in Video Large
Language Models". Official code: github.com/Hai-chao-Zhang/VQToken at
019f89fd877fb7c28f771e8e33b4d3a34aa28e09.

* ``llava/model/llava_arch.py`` 919-949: the encoded, projected, UN-POOLED frame features
  [T, 729, C] go to ``compression_method = self.token_dynamics_only_base`` (l.924) with
  ``adaptive='elbow'`` (l.936) instead of OV's 2x2 pooling; the video's newline token is
  appended once after it (``one_token``, l.1030-1036).
* ``llava_arch.py`` 272-301 ``token_dynamics_only_base``: adaptive k-means (K = 12..32) and
  the LLM receives only ``cluster_means`` [K, C]: the codebook ("centroids" here).
* ``llava_arch.py`` 213-242 ``token_dynamics`` (inactive in the release): the float-cast index
  map [T, 729] and the codebook go through ``VQAttn`` (constructed at l.64 with
  ``query_dim=729, context_dim=896, num_heads=8``).
* ``VQToken/vq_attn.py`` 9-57 ``VQAttn``: ``Linear(729 -> C)`` on each frame's index-map row,
  one ``nn.TransformerDecoderLayer`` (defaults: 2048 FFN, dropout 0.1, post-norm, ReLU) with
  the codebook as memory; 59-102 ``cross_attention_weighted_clusters``: the shorter of the
  two sequences is tiled (repeat + trim) to the longer one, so the output has max(T, K) rows.
* Clustering (``VQToken/vq_token.py`` 6-53, ``VQToken/cluster.py`` 7-139): see
  ``methods/kmeans.py``.

The two registry names. All paper versions describe one computation: L2-normalised tokens of
all frames clustered jointly; the cluster means form the "token base" (v1) / "token hash
table" (v2-v3) / "codebook" (v6); the per-cell cluster ids form the "token dynamics map" (v1)
/ "token indices key map" (v2-v3) / index map (v6); a learned "cross-dynamics attention"
(v1-v3) / "VQ-Attention" (v6) injects the map into the codebook without adding tokens. The
code has one module for both names. So ``token_dynamics`` and ``vqtoken`` share all code and
differ only in the default ``mode``: in v1-v3 cross-dynamics attention is part of the method
(what the LLM sees is the attended token base), so ``token_dynamics`` defaults to
``mode=attention`` and needs trained weights; ``vqtoken`` defaults to ``mode=centroids``,
the released code's active path (training-free on any checkpoint; Table 6's codebook-only
ablation).

Faithful: the k-means (k-means++ Euclidean seeding, cosine assignment, plain-mean update,
``tol`` stop without update, ``max_iter`` 100), the codebook (means of the normalised
tokens), the K = 12..32 candidate range, the released elbow rule (``rule=elbow_official``,
offset bug and fresh final fit included), the VQ-Attention architecture and its max(T, K)
tiling, one newline token after the video, compact positions.

Different, and why:

* ``rule=elbow`` (default) is the upstream fix (commit 22311db5, ``compute_elbow``): the
  candidate K farthest from the chord of the normalised distortion curve, keeping that
  candidate's fit. The released rule returns an offset index biased to K=12.
* A fixed K (``k=<int>``, or a budget) runs one fit; the released fixed-K helper
  (``vq_token.py`` 56-99) raises a TypeError (wrong constructor arguments).
* Candidates are fitted in one batched sweep, seeded from a ``torch.Generator(seed)``
  instead of the global RNG (deterministic per video).
* Zero tokens stay zero instead of NaN; empty clusters (duplicate seeds, fewer distinct
  tokens than K) are dropped instead of being sent as zero vectors (``info['k_used']``).
* ``rescale=true`` (off by default in centroids mode, as released) scales every codebook entry to the mean
  norm of the input tokens: codebook entries are means of unit vectors (norm <= 1) while
  the LLM was trained on projector outputs of much larger norm; the released checkpoint was
  fine-tuned on the small-norm codebook, an off-the-shelf one was not. In attention mode the
  rescaled codebook is the module's memory: with the released scale, the index-map queries
  (cluster ids cast to float, magnitudes up to K) swamp the unit-norm memory after the
  residual, and our small-scale fine-tune kept its answer loss at chance (ln 4 on the letter)
  for 400 steps; with the memory rescaled it left chance within 300 steps. Weights record
  which scale they were trained on (``rescaled_memory`` in the safetensors metadata): in
  attention mode ``rescale`` defaults to that record, and an explicit other value is refused.
  Missing weights and a contradicting ``rescale`` are refused before any model work
  (``check_checkpoint``, called when the runner is built) and again before clustering.
* The attention module uses ``batch_first`` and LayerNorm scales initialised to 1 (the
  released init draws them from U(-0.01, 0.01), fixed upstream); its state-dict keys are the
  released ones (``to_q_proj.*``, ``transformer_decoder.layers.0.*``; a
  ``model.cross_attention.`` prefix is stripped on load). Its weights are read from
  ``<checkpoint_dir>/vq_attention.safetensors``; random weights only on explicit request.
* Budgets: ``tokens=N`` sets K = N, ``retain=r`` sets K = round(r * pooled grid count); with
  ``k=auto`` a budget caps the candidate range instead. Paper FLOPs use K (``k_max`` for
  adaptive K, the upper bound); in attention mode the LLM gets max(T, K) tokens, which the
  schedule (that does not know T) does not add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tokbench.methods.base import (
    STAGE_PRE_LLM,
    BudgetError,
    MethodError,
    ParamSpec,
    ReducedTokens,
    Reducer,
    VideoTokens,
    append_newline,
    l2_normalize,
)
from tokbench.methods.kmeans import (
    ELBOW_RULES,
    adaptive_kmeans,
    cluster_means,
    kmeans,
    seeded_generator,
)
from tokbench.methods.registry import register

VQ_ATTENTION_FILE = "vq_attention.safetensors"
RELEASED_KEY_PREFIX = "model.cross_attention."
DEFAULT_HEADS = 8
DEFAULT_FFN = 2048
MODES = ("centroids", "attention")


def attention_heads(dim: int, preferred: int = DEFAULT_HEADS) -> int:
    """The released 8 heads, or the largest head count below it that divides ``dim``."""
    return next(h for h in range(min(preferred, dim), 0, -1) if dim % h == 0)


class VQAttention(nn.Module):
    """VQ-Attention / cross-dynamics attention (released ``VQToken/vq_attn.py`` 9-102).

    Queries: each frame's index-map row (cluster ids cast to float) through
    ``Linear(grid_tokens -> dim)``; memory: the codebook; one transformer decoder layer.
    The shorter of the T queries and the K codebook rows is tiled to the longer, so the
    output is [max(T, K), dim]. ``rescaled_memory`` records whether the module was trained on a
    codebook scaled to the token norm (vqtoken ``rescale=true``); released weights were not.
    """

    def __init__(
        self,
        grid_tokens: int,
        dim: int,
        num_heads: int | None = None,
        ffn: int = DEFAULT_FFN,
        rescaled_memory: bool = False,
    ):
        super().__init__()
        self.grid_tokens, self.dim, self.rescaled_memory = grid_tokens, dim, rescaled_memory
        self.num_heads = num_heads or attention_heads(dim)
        self.to_q_proj = nn.Linear(grid_tokens, dim)
        layer = nn.TransformerDecoderLayer(dim, self.num_heads, dim_feedforward=ffn, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded init: Xavier-uniform matrices, zero biases, unit LayerNorm scales."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param, generator=generator)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.fill_(1.0)

    def forward(self, index_map: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        frames, codes = index_map.shape[0], codebook.shape[0]
        rows = torch.arange(max(frames, codes), device=codebook.device)
        queries = self.to_q_proj(index_map[rows % frames])
        return self.transformer_decoder(tgt=queries[None], memory=codebook[rows % codes][None])[0]


def save_vq_attention(module: VQAttention, directory: str | Path) -> Path:
    """Write a module's weights to ``<directory>/vq_attention.safetensors`` (with its shape and
    whether it was trained on a rescaled codebook)."""
    path = Path(directory) / VQ_ATTENTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in module.state_dict().items()}
    meta = {
        "grid_tokens": str(module.grid_tokens),
        "dim": str(module.dim),
        "num_heads": str(module.num_heads),
        "rescaled_memory": str(int(module.rescaled_memory)),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def load_vq_attention(directory: str | Path, dim: int, grid_tokens: int) -> VQAttention:
    """Load trained weights from ``<directory>/vq_attention.safetensors`` (eval mode).

    Raises MethodError if the file is missing or was trained for another grid or width.
    """
    path = Path(directory) / VQ_ATTENTION_FILE
    if not path.is_file():
        raise MethodError(f"no VQ-Attention weights ({VQ_ATTENTION_FILE}) in {directory}")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        names = list(handle.keys())
        state = {name.removeprefix(RELEASED_KEY_PREFIX): handle.get_tensor(name) for name in names}
    weight = state.get("to_q_proj.weight")
    if weight is None or tuple(weight.shape) != (dim, grid_tokens):
        found = None if weight is None else tuple(weight.shape)
        raise MethodError(f"{path} holds a VQ-Attention for {found} (dim, grid), not ({dim}, {grid_tokens})")
    ffn = state["transformer_decoder.layers.0.linear1.weight"].shape[0]
    heads = int(meta.get("num_heads", attention_heads(dim)))
    module = VQAttention(grid_tokens, dim, heads, ffn, rescaled_memory=meta.get("rescaled_memory") == "1")
    module.load_state_dict(state)
    return module.eval().requires_grad_(False)  # inference weights (fvcore's trace takes them as constants)


def drop_empty_clusters(labels: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove codebook rows no token uses and renumber the labels densely."""
    used = torch.bincount(labels, minlength=codebook.shape[0]) > 0
    if bool(used.all()):
        return labels, codebook
    renumber = torch.cumsum(used, dim=0) - 1
    return renumber[labels], codebook[used]


def rescale_rows(codebook: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Every non-zero row scaled to L2 norm ``norm``."""
    return l2_normalize(codebook) * norm


def _is_int(value: Any, minimum: int | None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def vq_params(default_mode: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("k", int, None, "codebook size K: an integer, or auto (adaptive; the default without a budget)"),
        ParamSpec("k_min", int, 12, "smallest candidate K for k=auto"),
        ParamSpec("k_max", int, 32, "largest candidate K for k=auto"),
        ParamSpec(
            "rule",
            str,
            "elbow",
            "adaptive-K rule: elbow (upstream chord fix) or elbow_official (released)",
            ELBOW_RULES,
        ),
        ParamSpec("mode", str, default_mode, "centroids: the codebook; attention: learned VQ-Attention output", MODES),
        ParamSpec("allow_random_weights", bool, False, "mode=attention without trained weights: seeded random init"),
        ParamSpec("max_iter", int, 100, "k-means iterations per fit"),
        ParamSpec("tol", float, 1e-4, "k-means stop: Frobenius shift of the centroids below tol"),
        ParamSpec("seed", int, 0, "seed of the k-means++ draws (and of random attention weights)"),
        ParamSpec(
            "rescale",
            bool,
            None,
            "scale codebook entries to the mean input-token norm (before VQ-Attention in mode=attention); "
            "default: what the VQ-Attention weights record in mode=attention, else false",
        ),
    )


class _VQTokenBase(Reducer):
    """Shared implementation of ``vqtoken`` and ``token_dynamics``."""

    stage = STAGE_PRE_LLM
    position_policy = "compact"
    needs_unpooled = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._attention: tuple[VQAttention, bool] | None = None

    def validate(self) -> None:
        v = self.values
        k = v["k"]
        if k is not None and k != "auto" and not _is_int(k, minimum=1):
            raise MethodError(f"{self.name}: k={k!r} must be a positive integer or auto")
        for name in ("k_min", "k_max", "max_iter", "seed"):
            if not _is_int(v[name], minimum=None):
                raise MethodError(f"{self.name}: {name}={v[name]!r} must be an integer")
        if v["k_min"] < 1 or v["k_max"] < v["k_min"]:
            raise MethodError(f"{self.name}: empty candidate range k_min={v['k_min']}..k_max={v['k_max']}")
        if v["max_iter"] < 1 or v["tol"] < 0:
            raise MethodError(f"{self.name}: max_iter must be >= 1 and tol >= 0")
        if self.position_policy_used != "compact":
            raise MethodError(f"{self.name}: codebook tokens have no grid position; use positions=compact")
        if isinstance(k, int) and self.budget.tokens is not None and k > self.budget.tokens:
            raise BudgetError(f"{self.name}: k={k} exceeds the tokens={self.budget.tokens} budget")

    # -- what K to fit ---------------------------------------------------------------------
    def _budget_cap(self, available: int) -> int | None:
        return self.budget.count(available) if self.budget.is_set else None

    def _candidates(self, cap: int | None, n_tokens: int) -> tuple[list[int], bool]:
        """Candidate K values and whether K is chosen adaptively."""
        k = self.values["k"]
        if k is None:
            k = "auto" if cap is None else cap
        if k == "auto":
            high = min(self.values["k_max"], n_tokens, cap if cap is not None else n_tokens)
            if self.values["k_min"] > high:
                raise BudgetError(
                    f"{self.name}: no candidate K in {self.values['k_min']}..{high} (tokens or budget too small)"
                )
            return list(range(self.values["k_min"], high + 1)), True
        if cap is not None and k > cap:
            raise BudgetError(f"{self.name}: k={k} exceeds the budget of {cap} tokens")
        if k > n_tokens:
            raise MethodError(f"{self.name}: k={k} exceeds the {n_tokens} tokens of the video")
        return [k], False

    def token_schedule(self, visual_tokens: int, num_layers: int) -> list[tuple[int, int]]:
        """One stage of K tokens: the fixed K, or ``k_max`` (capped by a budget) for adaptive K."""
        cap = self._budget_cap(visual_tokens)
        k = self.values["k"]
        if k is None:
            k = "auto" if cap is None else cap
        if k == "auto":
            k = self.values["k_max"] if cap is None else min(self.values["k_max"], cap)
        return [(num_layers, k)]

    # -- the reduction -------------------------------------------------------------------
    def _cluster(self, x_unit: torch.Tensor, ks: list[int], adaptive: bool) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Chosen K, labels [N] and codebook [K, D] of the normalised tokens."""
        v = self.values
        generator = seeded_generator(v["seed"], x_unit.device)
        if adaptive:
            fit = adaptive_kmeans(x_unit, ks, rule=v["rule"], max_iter=v["max_iter"], tol=v["tol"], generator=generator)
            return fit.k, fit.labels, fit.codebook
        single = kmeans(x_unit, ks[0], max_iter=v["max_iter"], tol=v["tol"], generator=generator)
        return ks[0], single.labels, cluster_means(x_unit, single.labels, ks[0])

    def attach_attention(self, module: VQAttention) -> None:
        """Use ``module`` (e.g. one being trained) instead of loading weights from the checkpoint."""
        self._attention = (module, False)

    def _attention_module(self, video: VideoTokens, dim: int, grid_tokens: int) -> tuple[VQAttention, bool]:
        """The VQ-Attention for this model (cached), and whether its weights are random."""
        if self._attention is not None and (self._attention[0].dim, self._attention[0].grid_tokens) == (
            dim,
            grid_tokens,
        ):
            return self._attention
        directory = video.checkpoint_dir
        if directory is not None and (Path(directory) / VQ_ATTENTION_FILE).is_file():
            module, random_weights = load_vq_attention(directory, dim, grid_tokens), False
        elif self.values["allow_random_weights"]:
            module, random_weights = VQAttention(grid_tokens, dim), True
            module.reset_parameters(seeded_generator(self.values["seed"]))
            module.eval().requires_grad_(False)  # inference weights, as loaded ones (fvcore traces them as constants)
        else:
            raise self._no_weights(directory)
        self._attention = (module, random_weights)
        return self._attention

    def _no_weights(self, directory: str | None) -> MethodError:
        return MethodError(
            f"{self.name}: mode=attention needs trained VQ-Attention weights ({VQ_ATTENTION_FILE}), "
            f"not found in {directory}; train them, use mode=centroids, or set allow_random_weights=true"
        )

    def _check_rescale(self, rescaled_memory: bool) -> None:
        """An explicit ``rescale`` must be the one the weights were trained with."""
        given = self.values["rescale"]
        if given is not None and given != rescaled_memory:
            trained = str(rescaled_memory).lower()
            raise MethodError(
                f"{self.name}: these VQ-Attention weights were trained with rescale={trained}; "
                f"run with rescale={trained} (or leave rescale unset)"
            )

    def check_checkpoint(self, checkpoint_dir: str | None) -> None:
        """Before any model work: mode=attention needs weights in the checkpoint (or random ones
        allowed), and an explicit ``rescale`` must match their metadata (read without the weights)."""
        if self.values["mode"] != "attention" or self._attention is not None:
            return
        path = Path(checkpoint_dir) / VQ_ATTENTION_FILE if checkpoint_dir is not None else None
        if path is not None and path.is_file():
            with safe_open(str(path), framework="pt") as handle:
                self._check_rescale((handle.metadata() or {}).get("rescaled_memory") == "1")
        elif not self.values["allow_random_weights"]:
            raise self._no_weights(checkpoint_dir)

    def _resolved_attention(self, video: VideoTokens, dim: int, grid_tokens: int) -> tuple[VQAttention | None, bool, bool]:
        """Before any clustering: the VQ-Attention module (mode=attention, else None), whether its
        weights are random, and the ``rescale`` to use (given, else what the weights record)."""
        given = self.values["rescale"]
        if self.values["mode"] != "attention":
            return None, False, bool(given)
        module, random_weights = self._attention_module(video, dim, grid_tokens)
        if random_weights:
            return module, True, bool(given)
        self._check_rescale(module.rescaled_memory)
        return module, False, module.rescaled_memory

    def _attend(self, module: VQAttention, index_map: torch.Tensor, codebook: torch.Tensor, cap: int | None) -> torch.Tensor:
        frames, codes = index_map.shape[0], codebook.shape[0]
        length = max(frames, codes)
        if cap is not None and length > cap:
            raise BudgetError(
                f"{self.name}: mode=attention outputs max(T, K) = max({frames}, {codes}) = {length} tokens, "
                f"above the budget of {cap}"
            )
        module = module.to(codebook.device)
        with torch.set_grad_enabled(module.training and torch.is_grad_enabled()):
            return module(index_map.float(), codebook)

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        grid = video.unpooled()
        frames, dim = int(grid.shape[0]), int(grid.shape[-1])
        module, random_weights, rescale = self._resolved_attention(video, dim, int(grid.shape[1] * grid.shape[2]))
        x = grid.reshape(-1, dim).float()
        if not torch.isfinite(x).all():
            raise MethodError(f"{self.name}: visual features contain NaN or inf")
        cap = self._budget_cap(video.grid_token_count)
        ks, adaptive = self._candidates(cap, int(x.shape[0]))
        x_unit = l2_normalize(x)
        k, labels, codebook = self._cluster(x_unit.detach(), ks, adaptive)
        labels, codebook = drop_empty_clusters(labels, codebook)
        if x_unit.requires_grad:  # training: the assignment is fixed, the means carry gradients
            codebook = cluster_means(x_unit, labels, codebook.shape[0])
        v = self.values
        info: dict[str, Any] = {
            "k": k,
            "k_used": codebook.shape[0],
            "mode": v["mode"],
            "rule": v["rule"] if adaptive else "fixed",
            "rescale": rescale,
        }
        if adaptive:
            info["candidates"] = [ks[0], ks[-1]]
            info["flops_tokens"] = f"token_schedule counts k_max={ks[-1]}, the upper bound of the adaptive K"
        if rescale:
            codebook = rescale_rows(codebook, x.norm(dim=1).mean())
        if module is not None:
            info["random_weights"] = random_weights
            tokens = self._attend(module, labels.view(frames, -1), codebook, cap)
        else:
            tokens = codebook
        embeddings = tokens.to(video.features.dtype)
        positions = torch.full((embeddings.shape[0],), -1, dtype=torch.long, device=embeddings.device)
        embeddings, positions = append_newline(video, embeddings, positions)
        return ReducedTokens(embeddings, positions, info)


@register("vqtoken")
class VQToken(_VQTokenBase):
    """VQToken (NeurIPS 2025): the video as a k-means codebook of its un-pooled tokens.

    Default ``mode=centroids``: the released code's active path (``token_dynamics_only_base``),
    training-free; K adaptive (12..32) unless ``k`` or a budget fixes it.
    """

    summary = "VQToken (NeurIPS 2025): k-means codebook of un-pooled tokens, adaptive or fixed K"
    params = vq_params("centroids")


@register("token_dynamics")
class TokenDynamics(_VQTokenBase):
    """Token Dynamics (arXiv 2503.16980 v1-v3): token base + dynamics map + cross-dynamics attention.

    The same computation as ``vqtoken`` under the first paper's names. Its default is
    ``mode=attention``: in v1-v3 the cross-dynamics attention is part of the method, so it
    needs trained weights (``vq_attention.safetensors``) or ``allow_random_weights=true``.
    """

    summary = "Token Dynamics (arXiv 2503.16980 v1-v3): token base + dynamics map + cross-dynamics attention"
    params = vq_params("attention")
