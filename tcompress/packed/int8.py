"""`Int8Linear`: int8 weights, and (W8A8) int8 activations multiplied on an integer kernel.

Weights are symmetric int8 per output channel (`w ≈ q * s_out`). With `activations=True`
each token is quantized the same way at run time (`x ≈ p * s_tok`), so that

    y[t, o] = s_tok[t] * s_out[o] * sum_i p[t, i] * q[o, i]

and the sum is an exact int8 x int8 -> int32 product, which `torch._int_mm` computes. Where
no integer kernel serves the device, the same codes are multiplied in float32 chunks that
stay exact (`matmul="simulated"`); weight-only modules dequantize and run a float linear.
An optional input scale `s_in` (SmoothQuant's, where no preceding module could absorb it)
divides the input first: the module computes `x / s_in` times its stored weight.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcompress import kernels
from tcompress.core.modules import linear_weight
from tcompress.packed.registry import register_format

QMAX = 127  # symmetric: codes in [-127, 127], -128 unused
EXACT_FLOAT_SPAN = 1024  # 1024 * 127 * 127 < 2**24: a float32 dot product of that many codes is exact


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 codes of each row of `x` `[rows, cols]` and its scale `[rows, 1]` (fp32)."""
    x = x.float()
    absmax = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax))  # all-zero rows: any scale works
    return torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


# torch._int_mm runs on CPU, but on AVX2 machines about 17x slower than the exact float
# path below (2048x576 @ 576x1536: 0.92 s vs 54 ms), with identical results; so CPUs use the
# float path unless TCOMPRESS_CPU_INT_MM=1 asks for the integer kernel.
CPU_INT_MM = os.environ.get("TCOMPRESS_CPU_INT_MM", "0") == "1"


def int_mm_available(device: torch.device) -> bool:
    """Whether `torch._int_mm` serves this device (CUDA within its shape limits; CPU when
    `CPU_INT_MM` says so)."""
    return hasattr(torch, "_int_mm") and (device.type == "cuda" or (device.type == "cpu" and CPU_INT_MM))


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Exact `a @ b` for int8 `a` `[m, k]` and `b` `[k, n]`, as int32 `[m, n]`.

    On CPU `torch._int_mm` takes any shape. On CUDA it wants m > 16 and k, n multiples of 8,
    so the operands are padded with zeros (which add nothing) and the result cut back."""
    if not int_mm_available(a.device):
        return simulated_int8_matmul(a, b)
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    (m, k), n = a.shape, b.shape[1]
    rows, inner, cols = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    a = F.pad(a, (0, inner - k, 0, rows - m))
    b = F.pad(b.t(), (0, inner - k, 0, cols - n)).t()  # padded as [n, k], so b stays column-major
    return torch._int_mm(a, b)[:m, :n]


def simulated_int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """The same int32 result from float32 products over slices of k short enough to be exact."""
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32, device=a.device)
    for start in range(0, a.shape[1], EXACT_FLOAT_SPAN):
        part = slice(start, start + EXACT_FLOAT_SPAN)
        out += (a[:, part].float() @ b[part].float()).to(torch.int32)
    return out


@register_format
class Int8Linear(nn.Module):
    """A linear with int8 weights: W8A8 (int8 activations per token) or weight-only W8.

    Buffers: `qweight` int8 `[out, in]`, `scales` fp32 `[out]` (per output channel),
    `input_scale` fp32 `[in]` or None (the input is divided by it first), `bias` as it was.
    """

    format = "int8_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, activations: bool = True,
                 input_scale: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float32) if input_scale else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Module, activations: bool = True, input_scale: Tensor | None = None) -> Int8Linear:
        """Quantize `linear` (nn.Linear or Conv1D), whose weight already includes any input
        scale's inverse (columns multiplied by `input_scale`)."""
        weight = linear_weight(linear).detach()  # [out, in]
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        module = cls(weight.shape[1], weight.shape[0], bias=linear.bias is not None, activations=activations,
                     input_scale=input_scale is not None, dtype=dtype)
        codes, scales = quantize_rows(weight)
        module.qweight.copy_(codes)
        module.scales.copy_(scales.flatten())
        if input_scale is not None:
            module.input_scale.copy_(input_scale.float())
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module.to(weight.device)

    def layout(self) -> dict:
        """What `from_layout` needs to rebuild an empty module of this shape."""
        return {"in_features": self.in_features, "out_features": self.out_features, "activations": self.activations,
                "input_scale": self.input_scale is not None, "bias": self.bias is not None}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> Int8Linear:
        return cls(layout["in_features"], layout["out_features"], bias=layout["bias"],
                   activations=layout["activations"], input_scale=layout["input_scale"], dtype=dtype)

    @property
    def matmul(self) -> str:
        """How the forward multiplies: int8 (torch._int_mm), simulated (int8 codes multiplied
        exactly in float, no integer kernel here) or float (weight-only: dequantized weight)."""
        if not self.activations:
            return "float"
        return "int8" if int_mm_available(self.qweight.device) else "simulated"

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight `[out, in]` this module applies to its input (input scale included)."""
        weight = self.qweight.float() * self.scales[:, None]
        if self.input_scale is not None:
            weight = weight / self.input_scale
        return weight.to(dtype or self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if not self.activations:
            weight = (self.qweight.float() * self.scales[:, None]).to(x.dtype)
            return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
        tokens = x.reshape(-1, self.in_features)
        codes, token_scale = quantize_rows(tokens)  # [tokens, in] int8, [tokens, 1]
        if self.kernel_applies(x):
            y = kernels.int8_gemm(codes, token_scale, self.qweight, self.scales, self.bias)
        else:
            y = int8_matmul(codes, self.qweight.t()).float() * token_scale * self.scales  # [tokens, out]
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def kernel_applies(self, x: Tensor) -> bool:
        """Whether the C int8 kernel serves this input (CPU, no gradient; integer sums exact, so
        the result is bit-identical to the reference path)."""
        return (x.device.type == "cpu" and self.scales.dtype == torch.float32
                and not (x.requires_grad and torch.is_grad_enabled()) and kernels.available())

    def extra_repr(self) -> str:
        acts = "int8 per token" if self.activations else "float"
        scaled = ", input_scale" if self.input_scale is not None else ""
        return f"in={self.in_features}, out={self.out_features}, activations={acts}, matmul={self.matmul}{scaled}"

    def nbytes(self) -> int:
        tensors = [self.qweight, self.scales, self.input_scale, self.bias]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
