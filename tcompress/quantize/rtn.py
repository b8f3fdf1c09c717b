"""Round-to-nearest: each weight group mapped onto its own uniform grid, no data needed.

The floor every other method must beat; `search="mse"` shrinks each group's range to
minimise the rounding error, `search="hqq"` optimises its zero point (see `hqq.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tcompress.methods import register
from tcompress.quantize.base import WeightQuantizer
from tcompress.quantize.formats import QuantLinear
from tcompress.quantize.grid import quantize_weight


@register
@dataclass(frozen=True)
class RTN(WeightQuantizer):
    name = "rtn"
    needs_data = False

    def apply(self, linear: nn.Module, stats: None, name: str) -> QuantLinear:
        codes, scale, zero = quantize_weight(self.weight_of(linear), self.grid)
        return self.pack(linear, codes, scale, zero)
