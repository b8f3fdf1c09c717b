"""GPTQ: quantize a layer's columns one at a time, moving each rounding error onto the
columns not yet quantized through the inverse Hessian (Frantar et al., 2022, arXiv:2210.17323).

The Hessian of the layer-wise squared error is H = 2 X Xᵀ / n over the calibration inputs.
Its damped inverse is factored once (upper Cholesky), so the OBS update of every column is
a row of that factor; updates are applied lazily in blocks of `block_size` columns.
Act-order quantizes columns by decreasing H diagonal; with static groups the group grids
are fixed from the unquantized weight first, so act-order and group scales stay compatible
with the ordinary packed layout (no column permutation is stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.methods import register
from tcompress.quantize.base import WeightQuantizer
from tcompress.quantize.formats import QuantLinear
from tcompress.quantize.grid import Grid, choose_grid, quantize_codes


@dataclass
class HessianStats:
    total: Tensor  # sum of x xᵀ, [in, in], float32
    count: int = 0

    def hessian(self) -> Tensor:
        return 2 * self.total / max(self.count, 1)


def group_grid(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Scale and zero `[out]` for one group of columns `w` `[out, size]`."""
    return tuple(t.to(w.dtype) for t in choose_grid(w, grid))


def inverse_hessian_factor(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    h = h.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq_quantize(w: Tensor, h: Tensor, grid: Grid, *, block_size: int = 128, damp: float = 0.01,
                  act_order: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Codes `[out, in]` and per-group scales and zeros `[out, groups]` of `w` `[out, in]`.

    Runs in the dtype of `w` and `h` (float32 in use; float64 in the reference test).
    """
    w, h = w.clone(), h.clone()
    out_features, in_features = w.shape
    groups = grid.groups_of(in_features)
    size = in_features // groups
    dead = h.diagonal() == 0  # inputs that never fire: any value is exact
    h[dead, dead] = 1
    w[:, dead] = 0
    scales = torch.zeros(out_features, groups, dtype=w.dtype)
    zeros = torch.zeros_like(scales)
    if act_order:  # static groups: every grid from the unquantized weight
        for g in range(groups):
            scales[:, g], zeros[:, g] = group_grid(w[:, g * size : (g + 1) * size], grid)
    order = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(in_features)
    w, h = w[:, order], h[order][:, order]
    factor = inverse_hessian_factor(h, damp)
    codes = torch.zeros_like(w)
    columns = order.tolist()
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        errors = torch.zeros(out_features, end - start, dtype=w.dtype)
        for i in range(start, end):
            column, group = columns[i], columns[i] // size
            if not act_order and column % size == 0:  # dynamic groups: grid from the updated weight
                scales[:, group], zeros[:, group] = group_grid(w[:, i : i + size], grid)
            scale, zero = scales[:, group : group + 1], zeros[:, group : group + 1]
            q = quantize_codes(w[:, i : i + 1], scale, zero, grid.maxq)  # [out, 1]
            codes[:, i : i + 1] = q
            error = (w[:, i : i + 1] - (q - zero) * scale) / factor[i, i]
            w[:, i:end] -= error * factor[i, i:end]
            errors[:, i - start] = error[:, 0]
        w[:, end:] -= errors @ factor[start:end, end:]
    inverse = torch.argsort(order)
    return codes[:, inverse].to(torch.uint8), scales, zeros


@register
@dataclass(frozen=True)
class GPTQ(WeightQuantizer):
    """GPTQ weight quantization; `true_sequential` observes each group of a block's linears
    after the groups before it were quantized."""

    name = "gptq"
    input_only_stats = True  # the Hessian is the inputs' alone: q, k and v share one
    block_size: int = 128
    damp: float = 0.01  # fraction of the mean Hessian diagonal added to it
    act_order: bool = True
    true_sequential: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.damp < 1:
            raise ValueError(f"damp must be in [0, 1), got {self.damp!r}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size!r}")

    def init_stats(self, linear: nn.Module) -> HessianStats:
        n = self.weight_of(linear).shape[1]
        return HessianStats(torch.zeros(n, n, dtype=torch.float32, device=linear.weight.device))

    def observe(self, stats: HessianStats, x: Tensor) -> HessianStats:  # x: [tokens, in]
        x = x.float()
        stats.total.addmm_(x.t(), x)
        stats.count += x.shape[0]
        return stats

    def apply(self, linear: nn.Module, stats: HessianStats, name: str) -> QuantLinear:
        w = self.weight_of(linear).to(stats.total.device)
        codes, scales, zeros = gptq_quantize(w, stats.hessian(), self.grid, block_size=self.block_size,
                                             damp=self.damp, act_order=self.act_order)
        return self.pack(linear, codes, scales, zeros)
