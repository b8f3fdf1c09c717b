"""Round-to-nearest: each weight group mapped onto its own uniform grid, no data needed.

The floor every other method must beat; `search="mse"` shrinks each group's range to
minimise the rounding error, `search="hqq"` optimises its zero point (see `hqq.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tcompress.engine.method import register
from tcompress.packed.grid import quantize_weight
from tcompress.packed.quant_linear import QuantLinear
from tcompress.quantize.base import WeightQuantizer


@register
@dataclass(frozen=True)
class RTN(WeightQuantizer):
    """Round to nearest on each group's grid; no data."""

    name = "rtn"
    needs_data = False

    def apply(self, linear: nn.Module, stats: None, name: str) -> QuantLinear:
        codes, scale, zero = quantize_weight(self.weight_of(linear), self.grid)
        return self.pack(linear, codes, scale, zero)
