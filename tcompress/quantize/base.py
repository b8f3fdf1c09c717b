"""What every weight quantizer shares: its grid fields, validation, and packing the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.engine.method import LinearMethod, option
from tcompress.packed.grid import SEARCHES, SUPPORTED_BITS, Grid
from tcompress.packed.quant_linear import QuantLinear


@dataclass(frozen=True)
class GridFields:
    """The weight grid of a quantizer (per-linear or per-block): bits, group, symmetry, search."""

    kind: ClassVar[str] = "quantize"
    bits: int = option(4, f"bits a weight: {', '.join(map(str, SUPPORTED_BITS))}")
    group_size: int | None = option(64, "input channels per scale, or 'channel' for one scale a row",
                                    none="channel")
    symmetric: bool = option(False, "symmetric grid (zero at the middle code) instead of asymmetric")
    search: str = option("minmax", "each group's grid: min-max, a clipping search (mse) or HQQ-optimised zeros",
                         choices=SEARCHES)

    def __post_init__(self) -> None:
        _ = self.grid  # validates bits, group_size and search now, before any work

    @property
    def grid(self) -> Grid:
        return Grid(self.bits, self.group_size, self.symmetric, self.search)

    def headline(self) -> list[str]:
        return [f"W{self.bits}", f"g{self.group_size}" if self.group_size else "per-channel"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("bits", "group_size")

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


@dataclass(frozen=True)
class WeightQuantizer(GridFields, LinearMethod):
    """A weight-only quantizer applied linear by linear; subclasses implement `apply`."""
