"""QuantLinear's product from its packed codes, `x @ dequantize(W).T + bias`, on CPU.

Three routes, chosen by the number of tokens (measured per shape by `benchmarks/kernels.py`):
- 1-2 tokens (decoding one or two sequences): the int8 GEMV. The activations are rounded to
  int8 per block of 32 (scale max|x| / 127, as llama.cpp does on CPU) and the codes multiply
  as integers: fewer instructions a weight than converting them to float. The outputs differ
  from the float product by about 0.5% of their norm. `TCOMPRESS_GEMV=float` turns it off.
- up to `MAX_GEMV_TOKENS` (16): the float GEMV, which decodes each row's codes once and
  applies them to every token (fp32 sums, in another order than the reference).
- more (prefill): the weight decoded by the same C code into a float matrix, multiplied by
  BLAS, as the reference does.
No route materialises a float weight that outlives the call.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from tcompress.kernels.build import library

MAX_GEMV_TOKENS = int(os.environ.get("TCOMPRESS_GEMV_TOKENS", "16"))
INT8_GEMV_TOKENS = 2  # beyond this the float GEMV is faster (register-blocked over 4 tokens)
GEMV_ACTIVATIONS = os.environ.get("TCOMPRESS_GEMV", "int8")  # "int8" or "float"
if GEMV_ACTIVATIONS not in ("int8", "float"):
    raise ValueError(f"TCOMPRESS_GEMV must be int8 or float, got {GEMV_ACTIVATIONS!r}")


def supports(module, x: Tensor) -> bool:
    """Whether the kernels serve this module and input."""
    return layer_fits(module) and input_fits(x)


def layer_fits(module) -> bool:
    """4 or 8 bits, input width and group a multiple of 32, and the kernels built."""
    group = group_of(module)
    return (module.grid.bits in (4, 8) and module.in_features % 32 == 0 and group % 32 == 0
            and module.in_features % group == 0 and library() is not None)


def input_fits(x: Tensor) -> bool:
    """fp32 on CPU, and no gradient needed."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not (x.requires_grad and torch.is_grad_enabled()))


def linear(module, x: Tensor) -> Tensor:
    """`x` `[..., in]` times the module's quantized weight plus its bias, by the faster route
    for the number of tokens (input scale and outlier columns are the caller's)."""
    rows = x.reshape(-1, module.in_features)
    if rows.shape[0] <= MAX_GEMV_TOKENS:
        int8 = GEMV_ACTIVATIONS == "int8" and rows.shape[0] <= INT8_GEMV_TOKENS
        out = qgemm(module, rows, "int8" if int8 else "float")
    else:
        weight, order = decoded_weight(module)
        out = F.linear(rows if order is None else rows.index_select(1, order), weight, _bias(module))
    return out.reshape(*x.shape[:-1], module.out_features)


def qgemm(module, rows: Tensor, activations: str | None = None) -> Tensor:
    """`rows` `[tokens, in]` (at most 32) times the quantized weight, straight from the codes;
    `activations` "int8" or "float" (default: `GEMV_ACTIVATIONS`)."""
    rows = rows.contiguous()
    out = torch.empty(rows.shape[0], module.out_features, dtype=torch.float32)
    bias = _bias(module)
    lib = library()
    kernel = lib.tc_qgemv_i8 if (activations or GEMV_ACTIVATIONS) == "int8" else lib.tc_qgemm_f32
    _check(kernel(
        rows.data_ptr(), rows.shape[0], module.in_features, module.qweight.data_ptr(), module.out_features,
        module.scales.data_ptr(), module.zeros.data_ptr(), group_of(module), module.grid.bits,
        None if bias is None else bias.data_ptr(), out.data_ptr(), torch.get_num_threads()), module)
    return out


def decoded_weight(module) -> tuple[Tensor, Tensor | None]:
    """The float weight `[out, in]` decoded by the C code, and the input-column order it is in
    (None: natural; 4 bits: in every 32 columns the even ones, then the odd ones)."""
    weight = torch.empty(module.out_features, module.in_features, dtype=torch.float32)
    _check(library().tc_dequantize(
        module.qweight.data_ptr(), module.out_features, module.in_features, module.scales.data_ptr(),
        module.zeros.data_ptr(), group_of(module), module.grid.bits, weight.data_ptr(), torch.get_num_threads()), module)
    return weight, (column_order(module.in_features) if module.grid.bits == 4 else None)


@functools.cache
def column_order(in_features: int) -> Tensor:
    chunk = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    return (torch.arange(0, in_features, 32)[:, None] + chunk).reshape(-1)


def group_of(module) -> int:
    """Input channels per scale of a packed module (the whole row when per-channel)."""
    return module.grid.group_size or module.in_features


def _bias(module) -> Tensor | None:
    bias = module.bias
    return bias if bias is None or bias.dtype == torch.float32 else bias.float()


def _check(status: int, module) -> None:
    if status != 0:
        raise ValueError(f"the CPU kernel refused a {module.grid.bits}-bit layer of width {module.in_features}")


def int8_gemm(codes: Tensor, token_scale: Tensor, module) -> Tensor:
    """W8A8: int8 `codes` `[tokens, in]` with per-token `token_scale` `[tokens, 1]` times the
    module's int8 weight, exact in int32, scaled per token and channel, plus bias: the same
    float operations as the reference, in the same order."""
    codes = codes.contiguous()
    token_scale = token_scale.float().contiguous()
    out = torch.empty(codes.shape[0], module.out_features, dtype=torch.float32)
    bias = _bias(module)
    library().tc_int8_gemm(codes.data_ptr(), token_scale.data_ptr(), codes.shape[0], module.in_features,
                           module.qweight.data_ptr(), module.scales.data_ptr(), module.out_features,
                           None if bias is None else bias.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


class SharedInputLinears:
    """QuantLinears that read the same input (q, k, v; gate, up), multiplied in one kernel call
    when decoding: the input is rounded once and the threads share out all of their rows.
    Where the call does not apply (prefill, other layer types, float activations), each module
    runs on its own. Build it after the model has its final device and dtype: it keeps the
    buffers' addresses."""

    def __init__(self, modules: list) -> None:
        from tcompress.quantize.formats import QuantLinear

        self.modules = modules
        first = modules[0]
        self.fused = (all(isinstance(m, QuantLinear) for m in modules) and layer_fits(first)
                      and len({(m.in_features, m.grid) for m in modules}) == 1 and len(modules) <= 16
                      and all(m.input_scale is None and m.outlier_index is None and m.input_quantizer is None
                              and (m.bias is None or m.bias.dtype == torch.float32) for m in modules))
        if self.fused:
            count = len(modules)
            self.sizes = [m.out_features for m in modules]
            self._args = ((ctypes.c_void_p * count)(*[m.qweight.data_ptr() for m in modules]),
                          (ctypes.c_int * count)(*self.sizes),
                          (ctypes.c_void_p * count)(*[m.scales.data_ptr() for m in modules]),
                          (ctypes.c_void_p * count)(*[m.zeros.data_ptr() for m in modules]),
                          (ctypes.c_void_p * count)(*[None if m.bias is None else m.bias.data_ptr() for m in modules]))

    def __call__(self, x: Tensor) -> list[Tensor]:
        rows = x.reshape(-1, x.shape[-1])
        if not self.fused or rows.shape[0] > INT8_GEMV_TOKENS or GEMV_ACTIVATIONS != "int8" or not input_fits(x):
            return [m(x) for m in self.modules]
        rows = rows.contiguous()
        outs = [torch.empty(rows.shape[0], size, dtype=torch.float32) for size in self.sizes]
        first = self.modules[0]
        qweights, sizes, scales, zeros, biases = self._args
        outputs = (ctypes.c_void_p * len(outs))(*[o.data_ptr() for o in outs])
        _check(library().tc_qgemv_i8_multi(rows.data_ptr(), rows.shape[0], first.in_features, len(outs), qweights,
                                           sizes, scales, zeros, biases, outputs, group_of(first), first.grid.bits,
                                           torch.get_num_threads()), first)
        return [o.reshape(*x.shape[:-1], o.shape[1]) for o in outs]


# ---- the float parts of a decode step, one C call each (fp32, contiguous) ----

def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`x * rsqrt(mean(x²) + eps) * weight` over the last dimension."""
    x = x.contiguous()
    out = torch.empty_like(x)
    library().tc_rms_norm(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], weight.data_ptr(), eps, out.data_ptr())
    return out


def rope_(x: Tensor, heads: int, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in place on `x` `[rows, heads * dim]` (one position a row; `cos`, `sin`
    `[rows, dim]`, Hugging Face's rotate_half convention)."""
    rows = x.shape[0]
    dim = cos.shape[-1]
    library().tc_rope(x.data_ptr(), rows, heads, dim, x.stride(0), cos.data_ptr(), sin.data_ptr())
    return x


def attention_step(q: Tensor, keys: Tensor, values: Tensor, length: int, scale: float) -> Tensor:
    """Attention of one query a sequence, `q` `[B, H, dim]`, over the first `length` positions
    of `keys` and `values` `[B, KV, capacity, dim]` (grouped-query heads); `[B, H, dim]`."""
    batch, heads, dim = q.shape
    out = torch.empty_like(q)
    library().tc_attention_step(q.data_ptr(), keys.data_ptr(), values.data_ptr(), batch, heads, keys.shape[1],
                                keys.shape[2], length, dim, scale, out.data_ptr(), torch.get_num_threads())
    return out


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """`silu(gate) * up`."""
    out = torch.empty_like(gate)
    library().tc_silu_mul(gate.data_ptr(), up.data_ptr(), gate.numel(), out.data_ptr())
    return out
