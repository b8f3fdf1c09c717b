"""Quantization-aware training: train through the rounding, then pack.

`prepare_qat` swaps each selected linear for a `FakeQuantLinear`, whose forward uses the
weight as the packed model will hold it: `(clamp(round(w / s + z), 0, maxq) - z) * s`, with
the rounding's gradient passed straight through (STE, Bengio et al., 2013). With
`learn_scales` the group scales `s` train too, as LSQ defines it (Esser et al., 2020,
arXiv:1902.08153): the gradient that autograd gives `s` through the STE is LSQ's, scaled
by 1 / sqrt(group size * maxq). Step sizes train in log space, so an optimizer step changes
them by a relative amount and they stay positive. Scales are rounded to fp16 in the forward (again with a
straight-through gradient), so `convert_qat` packs into `QuantLinear` codes that compute
exactly what training saw; saving, loading and exports then work as for any PTQ model.

A linear that is already a `QuantLinear` (GPTQ's output, say) starts from its own codes
and scales, so QAT can refine a post-training result. With `act_bits`, each linear's input
is fake-quantized too (per tensor, asymmetric, its step size learned by LSQ from a min-max
start on the first batch); packed, that becomes the `QuantLinear`'s input quantizer
(activations simulated, as `activations.py` says).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.core.modules import linear_weight, replace_module
from tcompress.engine.apply import change_each_linear
from tcompress.engine.method import option
from tcompress.engine.targets import check_targets, selected
from tcompress.packed.activations import ACT_BITS, ActQuantizer
from tcompress.packed.grid import Grid, expand, group_params
from tcompress.packed.quant_linear import QuantLinear
from tcompress.quantize.base import WeightQuantizer


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def scaled_gradient(x: Tensor, factor: float) -> Tensor:
    """x forward, gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


def fake_quantize_ste(weight: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """The dequantized weight `[out, in]` from per-group `scale`, `zero` `[out, groups]`."""
    s = expand(scale, weight.shape[1])
    z = expand(zero, weight.shape[1])
    codes = torch.clamp(round_ste(weight / s + z), 0, maxq)
    return (codes - z) * s


@dataclass(frozen=True)
class QAT(WeightQuantizer):
    """Fields of a QAT run: the grid (as for RTN and GPTQ) and whether scales learn."""

    name = "qat"
    needs_data = False
    learn_scales: bool = option(True, "LSQ: train the group scales with the weights")
    act_bits: int | None = option(None, "also fake-quantize each linear's input at these bits")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_bits is not None and (isinstance(self.act_bits, bool) or self.act_bits not in ACT_BITS):
            raise ValueError(f"act_bits must be None or one of {ACT_BITS}, got {self.act_bits!r}")

    def apply(self, linear: nn.Module, stats: None, name: str) -> nn.Module:
        module = FakeQuantLinear.from_linear(linear, self.grid, self.learn_scales)
        if self.act_bits is not None:
            module.input_quantizer = LearnedActivationQuantizer(self.act_bits)
        return module


class LearnedActivationQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantization of activations with an LSQ-learned step size;
    the step and zero point start from the min-max grid of the first batch it sees."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("zero", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        maxq = 2**self.bits - 1
        if not self.started:
            with torch.no_grad():
                low, high = x.min().clamp(max=0), x.max().clamp(min=0)
                step = max((high - low).item(), 1e-8) / maxq
                self.log_scale.fill_(torch.tensor(step).log().item())
                self.zero.fill_(torch.round(-low / step).item())
                self.started.fill_(True)
        scale = scaled_gradient(self.log_scale.exp(), (x.numel() * maxq) ** -0.5)
        return (torch.clamp(round_ste(x / scale + self.zero), 0, maxq) - self.zero) * scale

    def to_act_quantizer(self) -> ActQuantizer:
        quantizer = ActQuantizer("uniform", self.bits)
        quantizer.scale.fill_(self.log_scale.exp().item())
        quantizer.zero.fill_(self.zero.item())
        return quantizer.to(self.log_scale.device)


class FakeQuantLinear(nn.Module):
    """A linear trained through its own quantization; `to_quant_linear` packs it."""

    def __init__(self, weight: Tensor, scale: Tensor, zero: Tensor, bias: Tensor | None, grid: Grid,
                 learn_scales: bool = True):
        super().__init__()
        self.grid, self.in_features, self.out_features = grid, weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight.detach().float().clone())  # [out, in]
        self.log_scale = nn.Parameter(scale.detach().float().clamp(min=2**-14).log(),
                                      requires_grad=learn_scales)  # [out, groups]
        self.register_buffer("zero", zero.detach().float().clone())  # [out, groups], code units
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.gradient_scale = (self.in_features // scale.shape[1] * grid.maxq) ** -0.5
        self.input_quantizer: LearnedActivationQuantizer | None = None

    @classmethod
    def from_linear(cls, linear: nn.Module, grid: Grid, learn_scales: bool = True) -> FakeQuantLinear:
        """From a float linear (grid fitted by `grid.search`) or a `QuantLinear` (its codes)."""
        if isinstance(linear, QuantLinear):
            if linear.outliers or linear.input_scale is not None:
                raise ValueError("QAT cannot start from a QuantLinear with outlier columns or an input scale")
            weight, scale, zero = linear.dequantize(torch.float32), linear.scales.float(), linear.zeros.float()
            grid = linear.grid
        else:
            weight = linear_weight(linear).detach().float()
            scale, zero = group_params(weight, grid)
        module = cls(weight, scale, zero, linear.bias, grid, learn_scales)
        return module.to(weight.device)

    def stored_scale(self) -> Tensor:
        """The scales as fp16 will hold them, gradient passed through the rounding."""
        scale = scaled_gradient(self.log_scale.exp().clamp(min=2**-14), self.gradient_scale)
        return scale + (scale.half().float() - scale).detach()

    def quantized_weight(self) -> Tensor:
        return fake_quantize_ste(self.weight, self.stored_scale(), self.zero, self.grid.maxq)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return nn.functional.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    @torch.no_grad()
    def to_quant_linear(self) -> QuantLinear:
        scale = self.stored_scale()
        codes = torch.clamp(torch.round(self.weight / expand(scale, self.in_features)
                                        + expand(self.zero, self.in_features)), 0, self.grid.maxq)
        bias = self.bias.detach() if self.bias is not None else None
        packed = QuantLinear.from_codes(codes.to(torch.uint8), scale, self.zero, self.grid, bias,
                                        torch.float32).to(self.weight.device)
        if self.input_quantizer is not None:
            packed.input_quantizer = self.input_quantizer.to_act_quantizer()
        return packed

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.grid.bits}, "
                f"group={self.grid.group_size or 'channel'}, learn_scales={self.log_scale.requires_grad}")


def prepare_qat(model: nn.Module, config: QAT) -> nn.Module:
    """Swap the block linears `config` selects, and every `QuantLinear` (which keeps its own
    grid), for `FakeQuantLinear`s, in place."""
    packed = [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]
    for name in packed:
        linear = model.get_submodule(name)
        replace_module(model, name, FakeQuantLinear.from_linear(linear, linear.grid, config.learn_scales))
    if not packed or selected(model, config):
        check_targets(model, config)
        change_each_linear(model, config)
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """Pack every `FakeQuantLinear` of `model` into a `QuantLinear`, in place."""
    names = [name for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)]
    for name in names:
        replace_module(model, name, model.get_submodule(name).to_quant_linear())
    return model
