"""Linears that read one input (q, k, v; gate, up), multiplied in one kernel call when decoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress import kernels
from tcompress.packed.quant_linear import QuantLinear


class SharedInputLinears:
    """QuantLinears that read the same input, multiplied in one kernel call of one or two tokens
    (`kernels.MultiGemv`): the input is rounded once and the threads share out all of their rows.
    Where the call does not apply (prefill, other layer types, float activations), each module
    runs on its own. Build it after the model has its final device and dtype: it keeps the
    buffers' addresses."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.fused = fusable(modules)
        if self.fused:
            first = modules[0]
            self.call = kernels.MultiGemv([m.qweight for m in modules], [m.scales for m in modules],
                                          [m.zeros for m in modules], [m.bias for m in modules], first.in_features,
                                          first.grid.bits, first.group)

    def __call__(self, x: Tensor) -> list[Tensor]:
        rows = x.reshape(-1, x.shape[-1])
        if (not self.fused or rows.shape[0] > kernels.ops.INT8_GEMV_TOKENS or kernels.ops.GEMV_ACTIVATIONS != "int8"
                or not kernels.input_fits(x)):
            return [m(x) for m in self.modules]
        return [o.reshape(*x.shape[:-1], o.shape[1]) for o in self.call(rows)]


def fusable(modules: list[nn.Module]) -> bool:
    """Packed linears the kernels run, on one grid and width, with nothing beside their codes
    (no input scale, outlier columns or activation quantizer; fp32 bias)."""
    return (all(isinstance(m, QuantLinear) for m in modules) and modules[0].kernel_fits
            and len({(m.in_features, m.grid) for m in modules}) == 1 and len(modules) <= 16
            and all(m.input_scale is None and m.outlier_index is None and m.input_quantizer is None
                    and (m.bias is None or m.bias.dtype == torch.float32) for m in modules))
