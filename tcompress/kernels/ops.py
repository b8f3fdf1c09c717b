"""QuantLinear's product from its packed codes, `x @ dequantize(W).T + bias`, on CPU.

Few tokens (decoding): `qgemm`, which reads each row's codes once for all tokens and never
materialises the float weight. By default it rounds the activations to int8 per block of 32
(scale max|x| / 127, as llama.cpp does on CPU) and multiplies the codes as integers, several
times fewer instructions a weight than converting them to float; the outputs differ from the
float product by about 0.5% of their norm. `TCOMPRESS_GEMV=float` keeps the activations in
fp32 (the same sums as the reference, in another order). Many tokens (prefill): the weight is
decoded by the same C code into a float matrix and multiplied by BLAS, exactly as the reference.
`MAX_GEMV_TOKENS` is where one stops paying (`TCOMPRESS_GEMV_TOKENS` overrides it).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from tcompress.kernels.build import library

MAX_GEMV_TOKENS = int(os.environ.get("TCOMPRESS_GEMV_TOKENS", "16"))
GEMV_ACTIVATIONS = os.environ.get("TCOMPRESS_GEMV", "int8")  # "int8" or "float"
if GEMV_ACTIVATIONS not in ("int8", "float"):
    raise ValueError(f"TCOMPRESS_GEMV must be int8 or float, got {GEMV_ACTIVATIONS!r}")


def supports(module, x: Tensor) -> bool:
    """Whether the kernels serve this module and input: fp32 on CPU, 4 or 8 bits, input width
    and group a multiple of 32, and no gradient needed."""
    grid = module.grid
    group = grid.group_size or module.in_features
    return (x.device.type == "cpu" and x.dtype == torch.float32 and grid.bits in (4, 8)
            and module.in_features % 32 == 0 and group % 32 == 0 and module.in_features % group == 0
            and not (x.requires_grad and torch.is_grad_enabled()) and library() is not None)


def linear(module, x: Tensor) -> Tensor:
    """`x` `[..., in]` times the module's quantized weight plus its bias, by the faster route
    for the number of tokens (input scale and outlier columns are the caller's)."""
    rows = x.reshape(-1, module.in_features)
    if rows.shape[0] <= MAX_GEMV_TOKENS:
        out = qgemm(module, rows)
    else:
        weight, order = decoded_weight(module)
        out = F.linear(rows if order is None else rows.index_select(1, order), weight, _bias(module))
    return out.reshape(*x.shape[:-1], module.out_features)


def qgemm(module, rows: Tensor, activations: str | None = None) -> Tensor:
    """`rows` `[tokens, in]` (at most 32) times the quantized weight, straight from the codes;
    `activations` "int8" (default: `GEMV_ACTIVATIONS`) or "float"."""
    rows = rows.contiguous()
    out = torch.empty(rows.shape[0], module.out_features, dtype=torch.float32)
    bias = _bias(module)
    lib = library()
    kernel = lib.tc_qgemv_i8 if (activations or GEMV_ACTIVATIONS) == "int8" else lib.tc_qgemm_f32
    _check(kernel(
        rows.data_ptr(), rows.shape[0], module.in_features, module.qweight.data_ptr(), module.out_features,
        module.scales.data_ptr(), module.zeros.data_ptr(), _group(module), module.grid.bits,
        None if bias is None else bias.data_ptr(), out.data_ptr(), torch.get_num_threads()), module)
    return out


def decoded_weight(module) -> tuple[Tensor, Tensor | None]:
    """The float weight `[out, in]` decoded by the C code, and the input-column order it is in
    (None: natural; 4 bits: in every 32 columns the even ones, then the odd ones)."""
    weight = torch.empty(module.out_features, module.in_features, dtype=torch.float32)
    _check(library().tc_dequantize(
        module.qweight.data_ptr(), module.out_features, module.in_features, module.scales.data_ptr(),
        module.zeros.data_ptr(), _group(module), module.grid.bits, weight.data_ptr(), torch.get_num_threads()), module)
    return weight, (column_order(module.in_features) if module.grid.bits == 4 else None)


@functools.cache
def column_order(in_features: int) -> Tensor:
    chunk = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    return (torch.arange(0, in_features, 32)[:, None] + chunk).reshape(-1)


def _group(module) -> int:
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
