"""SparseGPT: prune a layer's columns one at a time, moving each pruned (and, in the joint
mode, quantized) weight's error onto the columns not yet processed through the inverse
Hessian (Frantar & Alistarh, 2023, arXiv:2301.00774).

As in GPTQ, H = 2 X Xᵀ / n, damped, and the upper Cholesky factor U of its inverse gives
every column's OBS update. The mask is chosen adaptively: at the start of each block of
`block_size` columns, the weights of the block with the smallest w² / U_jj² (their OBS
error) are pruned, `sparsity` of them across the whole block; with an N:M pattern, the
M - N smallest of every M consecutive columns of a row are pruned when the first of them
is reached. With `bits` set, every kept weight is quantized on the grid of its group in the
same pass (the joint sparsify-and-quantize mode), and the result is a `QuantLinear`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.engine.method import option, register
from tcompress.packed.grid import Grid, group_grid
from tcompress.packed.quant_linear import QuantLinear
from tcompress.prune.base import Pruner
from tcompress.prune.masks import keep_mask, lowest
from tcompress.solvers.hessian import HessianStats, inverse_hessian_factor
from tcompress.solvers.obs import runs, sweep


@dataclass
class Pruned:
    weight: Tensor  # [out, in], zero where pruned
    kept: Tensor  # bool [out, in]
    codes: Tensor | None = None  # uint8 [out, in] in the joint mode
    scales: Tensor | None = None  # [out, groups]
    zeros: Tensor | None = None


def sparsegpt_prune(w: Tensor, h: Tensor, sparsity: float, *, nm: tuple[int, int] | None = None,
                    grid: Grid | None = None, block_size: int = 128, damp: float = 0.1) -> Pruned:
    """Prune `w` `[out, in]` given the Hessian `h` `[in, in]` of its inputs; with `grid`,
    quantize the kept weights too. Runs in the dtype of `w` and `h`."""
    w, h = w.clone(), h.clone()
    out_features, in_features = w.shape
    dead = h.diagonal() == 0  # inputs that never fire: their weights go first
    h[dead, dead] = 1
    w[:, dead] = 0
    factor = inverse_hessian_factor(h, damp, overwrite=True)  # h is this function's copy
    pivots = factor.diagonal()
    rows = w.t().contiguous()  # [in, out]: row i is column i of the weight
    kept = torch.ones_like(rows, dtype=torch.bool)
    size = (grid.group_size or in_features) if grid is not None else in_features
    codes = torch.zeros_like(rows, dtype=torch.uint8) if grid is not None else None
    groups = in_features // size
    scales = torch.zeros(groups, out_features, dtype=w.dtype)
    zeros = torch.zeros_like(scales)
    on_grid = {} if grid is None else dict(scales=scales, zeros=zeros, maxq=grid.maxq, codes=codes,
                                           groups=(torch.arange(in_features) // size).to(torch.int32))
    m = nm[1] if nm is not None else None
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        if nm is None:  # the block's mask at once, from its OBS errors
            errors_if_pruned = rows[start:end].pow(2) / pivots[start:end, None].pow(2)
            kept[start:end] = keep_mask(errors_if_pruned, sparsity, per_row=False)
        errors = torch.empty(end - start, out_features, dtype=w.dtype)
        for first, stop in runs(start, end, m, size if grid is not None else None):
            if nm is not None and first % m == 0:  # the M - N smallest OBS errors of these M columns
                errors_if_pruned = rows[first : first + m].pow(2) / pivots[first : first + m, None].pow(2)
                kept[first : first + m] = ~lowest(errors_if_pruned, m - nm[0], dim=0)
            if grid is not None and first % size == 0:  # the group's grid from its weights as updated so far
                scales[first // size], zeros[first // size] = group_grid(rows[first : first + size].t(), grid)
            sweep(rows, factor, first, stop, end, errors[first - start : stop - start], keep=kept, **on_grid)
        rows[end:].addmm_(factor[start:end, end:].t(), errors, alpha=-1)
    result = Pruned(rows.t().contiguous(), kept.t().contiguous())
    if grid is not None:
        result.codes, result.scales, result.zeros = codes.t().contiguous(), scales.t().contiguous(), zeros.t().contiguous()
    return result


@register
@dataclass(frozen=True)
class SparseGPT(Pruner):
    """SparseGPT: weights pruned column by column with OBS updates of the kept ones, the mask
    chosen as it goes. With `bits`, the kept weights are quantized in the same pass."""

    name = "sparsegpt"
    true_sequential = True
    input_only_stats = True  # the Hessian is the inputs' alone: q, k and v share one
    block_size: int = option(128, "columns per lazy block (and per adaptive mask)")
    # 0.1 rather than the paper's 0.01, for GPTQ's reason (see gptq.py): calibration text
    # rarely matches what the model serves
    damp: float = option(0.1, "fraction of the mean Hessian diagonal added to it, in [0, 1)")
    bits: int | None = option(None, "also quantize the kept weights (joint mode): 2, 3, 4 or 8")
    group_size: int | None = option(64, "with bits: input channels per scale, or 'channel'", none="channel")
    symmetric: bool = option(False, "with bits: symmetric grid")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.damp < 1:
            raise ValueError(f"damp must be in [0, 1), got {self.damp!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if self.nm is not None and self.block_size % self.nm[1]:
            raise ValueError(f"block_size={self.block_size} must be a multiple of M={self.nm[1]} of the pattern")
        _ = self.grid  # validates bits and group_size now

    def headline(self) -> list[str]:
        if self.bits is None:
            return super().headline()
        return [*super().headline(), f"W{self.bits}", f"g{self.group_size}" if self.group_size else "per-channel"]

    def headline_fields(self) -> tuple[str, ...]:
        return (*super().headline_fields(), "bits", "group_size")

    @property
    def grid(self) -> Grid | None:
        return None if self.bits is None else Grid(self.bits, self.group_size, self.symmetric)

    def check(self, name: str, linear: nn.Module) -> None:
        super().check(name, linear)
        if self.grid is not None:
            in_features = self.weight_of(linear).shape[1]
            try:
                self.grid.groups_of(in_features)
            except ValueError as error:
                raise ValueError(f"{self.name}: {name}: {error}") from None

    def stats_bytes(self, shape: tuple[int, int]) -> int:
        return 4 * shape[1] ** 2  # the inputs' Gram matrix, float32

    def work_bytes(self, shape: tuple[int, int]) -> int:
        out, n_in = shape
        return 4 * (2 * n_in**2 + 3 * out * n_in)  # H permuted (factored in place, LAPACK copying once); W and its errors

    def init_stats(self, linear: nn.Module) -> HessianStats:
        n = self.weight_of(linear).shape[1]
        return HessianStats(torch.zeros(n, n, dtype=torch.float32, device=linear.weight.device))

    def observe(self, stats: HessianStats, x: Tensor) -> HessianStats:
        stats.add(x)
        return stats

    def apply(self, linear: nn.Module, stats: HessianStats, name: str) -> nn.Module:
        w = self.weight_of(linear).float().to(stats.total.device)
        pruned = sparsegpt_prune(w, stats.hessian(), self.sparsity_of(name), nm=self.nm, grid=self.grid,
                                 block_size=self.block_size, damp=self.damp)
        if self.grid is None:
            return self.pack(linear, pruned.weight)
        bias = linear.bias.detach() if linear.bias is not None else None
        return QuantLinear.from_codes(pruned.codes, pruned.scales, pruned.zeros, self.grid, bias,
                                      linear.weight.dtype).to(linear.weight.device)
