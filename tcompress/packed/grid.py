"""The quantizer core: uniform integer grids for weights, as pure functions.

A weight `[out, in]` is cut into groups of `group_size` consecutive input channels per
output row (`group_size=None`: one group per row, i.e. per-channel). Each group gets a
scale `s` and a zero point `z` in code units; a weight `w` is stored as the code
`q = clamp(round(w / s + z), 0, 2^bits - 1)` and read back as `(q - z) * s`.
Asymmetric grids fit [min, max] of the group (zero is an integer code); symmetric grids fit
[-absmax, absmax] with `z = 2^(bits-1)`. Each group's grid comes from one of the searches:
`minmax` (as above), `mse` (shrink the range, keep per group the shrink factor with the
smallest error: the clip search of GPTQ's and AWQ's reference code), or `hqq` (optimise
the zero point by half-quadratic splitting, see `hqq.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcompress.packed.hqq import hqq_zero

SUPPORTED_BITS = (2, 3, 4, 6, 8)
SEARCHES = ("minmax", "mse", "hqq")


@dataclass(frozen=True)
class Grid:
    """How weights are quantized: bit width, group size, symmetry, range search."""

    bits: int = 4
    group_size: int | None = 64  # None: per output channel
    symmetric: bool = False
    search: str = "minmax"  # how each group's grid is chosen: minmax, mse or hqq

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.search == "hqq" and self.symmetric:
            raise ValueError("search='hqq' optimises the zero point, so it needs symmetric=False")
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size <= 0):
            raise ValueError(f"group_size must be a positive integer or None (per-channel), got {self.group_size!r}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups_of(self, in_features: int) -> int:
        """Groups per row; the group size must divide the input dimension."""
        size = self.group_size or in_features
        if in_features % size:
            raise ValueError(
                f"group_size={size} does not divide the input dimension {in_features}: "
                f"choose a divisor of {in_features} (e.g. {largest_divisor(in_features, size)}) or None for per-channel"
            )
        return in_features // size


def largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def fit_range(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Scale and zero for each row of `w` `[rows, cols]` (rows are groups): `[rows]` each."""
    return scale_zero(*value_range(w.float(), grid), grid)


def value_range(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """The [low, high] each row must cover; it always includes 0, so 0 is exact."""
    if grid.symmetric:
        high = w.abs().amax(dim=1)
        return -high, high
    return w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)


def scale_zero(low: Tensor, high: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """The grid that maps [low, high] onto the codes [0, maxq]."""
    scale = (high - low) / grid.maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant groups: any scale works
    if grid.symmetric:
        return scale, torch.full_like(scale, float(2 ** (grid.bits - 1)))
    return scale, torch.round(-low / scale)


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Codes of `w` `[rows, cols]` with per-row `scale`, `zero` `[rows, 1]` (zero may be
    fractional, as HQQ leaves it)."""
    return torch.clamp(torch.round(w / scale + zero), 0, maxq)


def dequantize_codes(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    return (q - zero) * scale


def fake_quantize(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    return dequantize_codes(quantize_codes(w, scale, zero, maxq), scale, zero)


def search_range(w: Tensor, grid: Grid, steps: int = 100, shrink: float = 0.8, norm: float = 2.4) -> tuple[Tensor, Tensor]:
    """Per-row scale and zero after shrinking the range by up to `shrink` (error norm `norm`)."""
    w = w.float()
    low, high = value_range(w, grid)
    scale, zero = scale_zero(low, high, grid)
    best = torch.full_like(scale, float("inf"))
    for i in range(int(shrink * steps)):
        factor = 1 - i / steps
        s, z = scale_zero(low * factor, high * factor, grid)
        error = (fake_quantize(w, s[:, None], z[:, None], grid.maxq) - w).abs().pow(norm).sum(dim=1)
        better = error < best
        best = torch.where(better, error, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def group_params(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Scale and zero of every group of `w` `[out, in]`: `[out, groups]` each."""
    out_features, in_features = w.shape
    groups = grid.groups_of(in_features)
    rows = w.reshape(out_features * groups, in_features // groups)
    scale, zero = choose_grid(rows, grid)
    return scale.view(out_features, groups), zero.view(out_features, groups)


def choose_grid(rows: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Scale and zero `[rows]` for each row of `rows` by the grid's search, as stored."""
    if grid.search == "mse":
        scale, zero = search_range(rows, grid)
    elif grid.search == "hqq":
        scale, zero = fit_range(rows, grid)
        zero = hqq_zero(rows.float(), scale, zero, grid.maxq)
    else:
        scale, zero = fit_range(rows, grid)
    return as_stored(scale, zero)


def as_stored(scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """Scales and zeros rounded to fp16, as QuantLinear stores them, so codes are chosen
    against the values that will be read back."""
    return scale.clamp(min=2**-24).half().float(), zero.half().float()


def group_grid(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Scale and zero `[out]` for one group of columns `w` `[out, size]`, in `w`'s dtype."""
    return tuple(t.to(w.dtype) for t in choose_grid(w, grid))


def expand(params: Tensor, in_features: int) -> Tensor:
    """Per-group values `[out, groups]` repeated over their columns: `[out, in]`."""
    return params.repeat_interleave(in_features // params.shape[1], dim=1)


def quantize_weight(w: Tensor, grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest: codes `[out, in]` (uint8), scales and zeros `[out, groups]`."""
    scale, zero = group_params(w, grid)
    codes = quantize_codes(w.float(), expand(scale, w.shape[1]), expand(zero, w.shape[1]), grid.maxq)
    return codes.to(torch.uint8), scale, zero
