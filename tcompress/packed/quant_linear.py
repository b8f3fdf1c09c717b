"""`QuantLinear`: a linear whose weight is stored as packed integer codes with group scales.

Bytes of a quantized linear `[out, in]` with `g` groups per row, the formula behind the
size checks: `out * ceil(in / k) * lcm / 8` (codes, see `bits.py`) `+ out * g * 2` (fp16
scales) `+ out * g * 2` (fp16 zeros) `+ bias`. At 4 bits, group 64, that is 4.5 bits per
weight. Input channels kept in float (outliers) add `k * 4` (int32 index) `+ out * k * 2` (fp16).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress import kernels
from tcompress.packed.bits import pack, packed_bytes_per_row, unpack
from tcompress.packed.grid import Grid, dequantize_codes, expand
from tcompress.packed.registry import register_format


@register_format
class QuantLinear(nn.Module):
    """A linear layer whose weight is stored as packed integer codes with group scales.

    Buffers: `qweight` uint8 `[out, packed]`, `scales` and `zeros` fp16 `[out, groups]`
    (zeros in code units, fractional where the method optimised them), `bias` as it was.
    Optionally `k` input channels kept in float beside the codes (LLM.int8()-style outliers):
    `outlier_index` int32 `[k]` and `outlier_weight` fp16 `[out, k]`; the codes there stand for 0.
    The forward dequantizes on the fly; the dequantized weight is not kept.
    """

    def __init__(self, in_features: int, out_features: int, grid: Grid, bias: bool = False,
                 dtype: torch.dtype = torch.float32, input_scale: bool = False, outliers: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.grid = in_features, out_features, grid
        groups = grid.groups_of(in_features)
        self.register_buffer("qweight", torch.zeros(out_features, packed_bytes_per_row(in_features, grid.bits),
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.float16))
        # inputs are divided by it (an activation-aware scale with no module to fold into)
        self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float16) if input_scale else None)
        self.register_buffer("outlier_index", torch.zeros(outliers, dtype=torch.int32) if outliers else None)
        self.register_buffer("outlier_weight", torch.zeros(out_features, outliers, dtype=torch.float16)
                             if outliers else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype
        self.input_quantizer: nn.Module | None = None  # an activation quantizer applied to the input first

    @classmethod
    def from_codes(cls, codes: Tensor, scales: Tensor, zeros: Tensor, grid: Grid, bias: Tensor | None,
                   dtype: torch.dtype, input_scale: Tensor | None = None, outlier_index: Tensor | None = None,
                   outlier_weight: Tensor | None = None) -> QuantLinear:
        """Build from codes `[out, in]` and per-group scales and zeros `[out, groups]`; the
        codes may be of a weight whose input channels were multiplied by `input_scale` `[in]`.
        `outlier_index` `[k]` and `outlier_weight` `[out, k]`: input channels kept in float."""
        out_features, in_features = codes.shape
        outliers = 0 if outlier_index is None else len(outlier_index)
        module = cls(in_features, out_features, grid, bias=bias is not None, dtype=dtype,
                     input_scale=input_scale is not None, outliers=outliers)
        module.qweight.copy_(pack(codes, grid.bits))
        module.scales.copy_(scales.to(torch.float16))
        module.zeros.copy_(zeros.to(torch.float16))
        if input_scale is not None:
            module.input_scale.copy_(input_scale.to(torch.float16))
        if outliers:
            module.outlier_index.copy_(outlier_index)
            module.outlier_weight.copy_(outlier_weight)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    format = "quant_linear"

    def layout(self) -> dict:
        """What `from_layout` needs to rebuild an empty module of this shape."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.grid.bits,
                "group_size": self.grid.group_size, "symmetric": self.grid.symmetric, "bias": self.bias is not None,
                "input_scale": self.input_scale is not None, "outliers": self.outliers}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> QuantLinear:
        grid = Grid(layout["bits"], layout["group_size"], layout["symmetric"])
        return cls(layout["in_features"], layout["out_features"], grid, bias=layout["bias"], dtype=dtype,
                   input_scale=layout.get("input_scale", False), outliers=layout.get("outliers", 0))

    @property
    def group(self) -> int:
        """Input channels per scale (the whole row when per-channel)."""
        return self.grid.group_size or self.in_features

    @property
    def kernel_fits(self) -> bool:
        """Whether the CPU kernels multiply these codes as they are."""
        return kernels.fits(self.grid.bits, self.in_features, self.group)

    @property
    def outliers(self) -> int:
        """How many input channels are kept in float."""
        return 0 if self.outlier_index is None else len(self.outlier_index)

    def codes(self) -> Tensor:
        return unpack(self.qweight, self.grid.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight `[out, in]` this layer applies to its input, as the codes (and the
        outlier columns kept in float) represent it."""
        weight = self._quantized_part()
        if self.outlier_index is not None:
            weight = weight.index_add(1, self.outlier_index, self.outlier_weight.float())
        return weight.to(dtype or self.compute_dtype)

    def _quantized_part(self) -> Tensor:
        scales = expand(self.scales.float(), self.in_features)
        zeros = expand(self.zeros.float(), self.in_features)
        weight = dequantize_codes(self.codes().float(), scales, zeros)
        if self.input_scale is not None:
            weight = weight / self.input_scale.float()
        return weight

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.kernel_fits and kernels.input_fits(x):  # the codes multiplied as they are, on CPU
            x_in = x if self.input_scale is None else x / self.input_scale.float()
            y = kernels.qlinear(x_in, self.qweight, self.scales, self.zeros, self.grid.bits, self.group, self.bias)
        else:
            y = self.reference_forward(x)
        if self.outlier_index is not None:  # the float columns: x[..., index] @ outlier_weight.T
            y = y + x.index_select(-1, self.outlier_index) @ self.outlier_weight.to(x.dtype).t()
        return y

    def reference_forward(self, x: Tensor) -> Tensor:
        """The product by dequantizing the codes to a float weight and calling matmul (the
        reference for the kernels, and the path where none applies)."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self._quantized_part().to(x.dtype), bias)

    def extra_repr(self) -> str:
        size = self.grid.group_size or "channel"
        kept = f", outliers={self.outliers}" if self.outliers else ""
        return f"in={self.in_features}, out={self.out_features}, bits={self.grid.bits}, group={size}{kept}"

    def nbytes(self) -> int:
        tensors = [self.qweight, self.scales, self.zeros, self.bias, self.input_scale, self.outlier_index,
                   self.outlier_weight]
        tensors = [t for t in tensors if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)
