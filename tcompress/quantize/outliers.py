"""Outlier decomposition: a few input channels kept in float, the rest rounded on the grid
(LLM.int8(), Dettmers et al., 2022, arXiv:2208.07339).

Large models grow a handful of hidden channels whose activations dwarf the rest (|x| > 6).
The weight columns those channels meet are kept in fp16, so their products lose nothing;
every other column is rounded to nearest on the grid, and the kept columns are zero in the
quantized part (zero is a code on every minmax or mse grid, so they add nothing there).
The layer computes `Q(W) x + W[:, K] x[K]`; `outlier_report` says what the float columns
cost per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.engine.method import option, register
from tcompress.packed.grid import quantize_weight
from tcompress.packed.quant_linear import QuantLinear
from tcompress.quantize.base import WeightQuantizer


@register
@dataclass(frozen=True)
class Outliers(WeightQuantizer):
    """LLM.int8()-style: round to nearest, the input channels whose max |x| exceeds `threshold`
    kept in fp16."""

    name = "outliers"
    input_only_stats = True  # max |x| is the inputs' alone: q, k and v share it
    stats_reduction = "max"
    bits: int = option(8, "bits a weight (default 8 here)")
    group_size: int | None = option(None, "input channels per scale, or 'channel' (the default here)",
                                    none="channel")
    threshold: float = option(6.0, "activation magnitude above which an input channel stays in fp16")

    def __post_init__(self) -> None:
        super().__post_init__()
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < math.inf:
            raise ValueError(f"outliers: threshold must be a positive number (an activation magnitude), "
                             f"got {threshold!r}")
        if self.search == "hqq":
            raise ValueError("outliers: search='hqq' leaves fractional zero points, on which the kept columns "
                             "would not be zero in the quantized part; use search='minmax' or 'mse'")

    def init_stats(self, linear: nn.Module) -> Tensor:
        return torch.zeros(linear_weight(linear).shape[1], device=linear.weight.device)  # max |x| per input channel

    def observe(self, stats: Tensor, x: Tensor) -> Tensor:  # x: [tokens, in]
        return torch.maximum(stats, x.detach().abs().amax(dim=0).float())

    def headline(self) -> list[str]:
        return [*super().headline(), f"threshold={self.threshold}"]

    def headline_fields(self) -> tuple[str, ...]:
        return (*super().headline_fields(), "threshold")

    def apply(self, linear: nn.Module, stats: Tensor, name: str) -> QuantLinear:
        weight = self.weight_of(linear)  # [out, in]
        index = outlier_channels(stats, self.threshold)  # [k]
        codes, scale, zero = quantize_weight(weight.index_fill(1, index, 0), self.grid)
        bias = linear.bias.detach() if linear.bias is not None else None
        dtype = linear.weight.dtype if linear.weight.is_floating_point() else torch.float32
        module = QuantLinear.from_codes(codes, scale, zero, self.grid, bias, dtype, outlier_index=index,
                                        outlier_weight=weight[:, index].half())
        return module.to(linear.weight.device)


def outlier_channels(absmax: Tensor, threshold: float) -> Tensor:
    """Indices `[k]` of the input channels whose max |x| exceeds `threshold`."""
    return torch.nonzero(absmax > threshold).flatten()


def outlier_report(model: nn.Module) -> list[dict]:
    """Per quantized linear: its name, input channels, how many it keeps in float, and the
    bytes those cost beyond the codes (index and fp16 columns)."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            kept = [t for t in (module.outlier_index, module.outlier_weight) if t is not None]
            rows.append({"module": name, "in_features": module.in_features, "channels": module.outliers,
                         "extra_bytes": sum(t.numel() * t.element_size() for t in kept)})
    return rows
