"""What every weight quantizer shares: its grid fields, validation, and packing the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.methods import LinearMethod
from tcompress.models.adapters import linear_weight
from tcompress.quantize.formats import QuantLinear
from tcompress.quantize.grid import Grid


@dataclass(frozen=True)
class WeightQuantizer(LinearMethod):
    """Fields of a weight-only quantizer; subclasses add their own and implement `apply`."""

    bits: int = 4
    group_size: int | None = 64  # None: per output channel
    symmetric: bool = False
    search: str = "minmax"  # each group's grid: minmax, mse (clip search) or hqq (zero optimised)
    include: tuple[str, ...] = ()  # fnmatch patterns of the linears to quantize; empty: all
    exclude: tuple[str, ...] = ()  # fnmatch patterns of linear names left in float
    head: bool = False  # also quantize the output head (e.g. lm_head), left in float by default

    def __post_init__(self) -> None:
        _ = self.grid  # validates bits, group_size and search now, before any work

    @property
    def grid(self) -> Grid:
        return Grid(self.bits, self.group_size, self.symmetric, self.search)

    def check(self, name: str, linear: nn.Module) -> None:
        """Refuse a linear the grid cannot cover, naming it."""
        try:
            self.grid.groups_of(linear_weight(linear).shape[1])
        except ValueError as error:
            raise ValueError(f"{self.name}: {name}: {error}") from None

    @staticmethod
    def weight_of(linear: nn.Module) -> Tensor:
        return linear_weight(linear).detach().float()  # [out, in]

    def pack(self, linear: nn.Module, codes: Tensor, scale: Tensor, zero: Tensor,
             input_scale: Tensor | None = None) -> QuantLinear:
        bias = linear.bias.detach() if linear.bias is not None else None
        dtype = linear.weight.dtype if linear.weight.is_floating_point() else torch.float32
        return QuantLinear.from_codes(codes, scale, zero, self.grid, bias, dtype, input_scale).to(linear.weight.device)
