"""Uniform pooling ("Interpolating" in VQToken's tables): pool every frame's grid to the budget.

Spatial pooling per frame to an h x w grid with h*w about budget / frames (keeping the grid's
aspect ratio); when the budget is below one token per frame, frames are also pooled in time
(consecutive frames averaged into ``budget`` groups, each pooled to one token). LLaVA-OV's own
2x2 bilinear pooling (729 -> 196 per frame) is this method with ``mode=bilinear`` applied to the
un-pooled grid; here it starts from the model's default (already pooled) grid unless
``source=unpooled``; either way ``retain``/``tokens`` count against the model's default visual
tokens (the pooled grid), so a budget means the same token count for every source. Positions: each pooled token names the grid cell under its centre in the
first frame of its group. The newline token is appended once, as the model does for video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokbench.methods.base import STAGE_PRE_LLM, MethodError, ParamSpec, ReducedTokens, Reducer, VideoTokens, append_newline
from tokbench.methods.registry import register


def spatial_shape(height: int, width: int, per_frame: float) -> tuple[int, int]:
    """The largest pooled grid (h, w) with h*w <= ``per_frame``; the squarest on ties."""
    best = (1, 1)
    for h in range(1, height + 1):
        w = min(width, int(per_frame // h))
        if w < 1:
            break
        if (h * w, -abs(h - w)) > (best[0] * best[1], -abs(best[0] - best[1])):
            best = (h, w)
    return best


def pool_frames(grid: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[T, H, W, D] -> [T, h, w, D] by adaptive average or bilinear interpolation."""
    x = grid.permute(0, 3, 1, 2)
    if mode == "avg":
        x = F.adaptive_avg_pool2d(x, size)
    else:
        x = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def centre_positions(frames: list[int], height: int, width: int, size: tuple[int, int]) -> torch.Tensor:
    """Flat default-layout index of the cell under each pooled token's centre."""
    h, w = size
    rows = ((torch.arange(h) + 0.5) * height / h).long().clamp(max=height - 1)
    cols = ((torch.arange(w) + 0.5) * width / w).long().clamp(max=width - 1)
    cell = (rows[:, None] * width + cols[None, :]).flatten()
    starts = torch.tensor(frames)[:, None] * (height * width)
    return (starts + cell[None]).flatten()


@register("uniform_pool")
class UniformPool(Reducer):
    stage = STAGE_PRE_LLM
    summary = "uniform spatial pooling per frame to the budget (temporal pooling below one token per frame)"
    params = (
        ParamSpec("mode", str, "avg", "avg = adaptive average pooling; bilinear = OV's interpolation", ("avg", "bilinear")),
        ParamSpec("source", str, "pooled", "pool the model's default grid or the un-pooled grid", ("pooled", "unpooled")),
    )

    def reduce_visual(self, video: VideoTokens) -> ReducedTokens:
        grid = video.features if self.values["source"] == "pooled" else video.unpooled()
        frames, height, width, dim = (int(size) for size in grid.shape)
        # the budget counts against the model's default visual tokens, whichever grid is pooled
        default = video.grid_token_count
        budget = min(self.budget.count(default), frames * height * width) if self.budget.is_set else default
        if budget >= frames:
            size = spatial_shape(height, width, budget / frames)
            pooled = pool_frames(grid, size, self.values["mode"]).reshape(-1, dim)
            group_starts = list(range(frames))
        else:
            groups = torch.tensor_split(torch.arange(frames), budget)
            pooled = torch.stack([grid[g].mean(dim=(0, 1, 2)) for g in groups])
            size = (1, 1)
            group_starts = [int(g[0]) for g in groups]
        positions = centre_positions(group_starts, height, width, size)
        if self.values["source"] == "unpooled":
            positions = torch.full_like(positions, -1)
            if self.position_policy_used == "original":
                raise MethodError("uniform_pool with source=unpooled has no default-layout positions; use positions=compact")
        embeddings, positions = append_newline(video, pooled, positions.to(pooled.device))
        return ReducedTokens(embeddings, positions, {"grid": f"{len(group_starts)}x{size[0]}x{size[1]}"})
