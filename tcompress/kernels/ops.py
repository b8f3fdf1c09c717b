"""Ops on tensors and ints (never a module): packed-code products, the float parts of a
decode step, and the OBS column sweep, each one C call.

The packed product `x @ dequantize(W).T + bias` (the codes as `QuantLinear` stores them) takes
one of three routes, chosen by the number of tokens (measured per shape by `benchmarks/kernels.py`):
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


def fits(bits: int, in_features: int, group: int) -> bool:
    """Whether the kernels serve packed codes of `bits` bits, rows of `in_features` codes and
    groups of `group` (4 or 8 bits, width and group multiples of 32) and are built."""
    return (bits in (4, 8) and in_features % 32 == 0 and group % 32 == 0 and in_features % group == 0
            and library() is not None)


def input_fits(x: Tensor) -> bool:
    """fp32 on CPU, and no gradient needed."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not (x.requires_grad and torch.is_grad_enabled()))


def qlinear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bits: int, group: int,
            bias: Tensor | None) -> Tensor:
    """`x` `[..., in]` times the weight packed as `qweight` `[out, packed]` with per-group fp16
    `scales`, `zeros` `[out, in / group]`, plus `bias`, by the faster route for the number of
    tokens."""
    in_features = x.shape[-1]
    rows = x.reshape(-1, in_features)
    if rows.shape[0] <= MAX_GEMV_TOKENS:
        int8 = GEMV_ACTIVATIONS == "int8" and rows.shape[0] <= INT8_GEMV_TOKENS
        out = qgemm(rows, qweight, scales, zeros, bits, group, bias, "int8" if int8 else "float")
    else:
        weight, order = decoded_weight(qweight, scales, zeros, in_features, bits, group)
        out = F.linear(rows if order is None else rows.index_select(1, order), weight, _float32(bias))
    return out.reshape(*x.shape[:-1], qweight.shape[0])


def qgemm(rows: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bits: int, group: int,
          bias: Tensor | None, activations: str | None = None) -> Tensor:
    """`rows` `[tokens, in]` (at most 32) times the packed weight, straight from the codes;
    `activations` "int8" or "float" (default: `GEMV_ACTIVATIONS`)."""
    rows = rows.contiguous()
    out_features, in_features = qweight.shape[0], rows.shape[1]
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    bias = _float32(bias)
    lib = library()
    kernel = lib.tc_qgemv_i8 if (activations or GEMV_ACTIVATIONS) == "int8" else lib.tc_qgemm_f32
    _check(kernel(rows.data_ptr(), rows.shape[0], in_features, qweight.data_ptr(), out_features, scales.data_ptr(),
                  zeros.data_ptr(), group, bits, None if bias is None else bias.data_ptr(), out.data_ptr(),
                  torch.get_num_threads()), bits, in_features)
    return out


def decoded_weight(qweight: Tensor, scales: Tensor, zeros: Tensor, in_features: int, bits: int, group: int
                   ) -> tuple[Tensor, Tensor | None]:
    """The float weight `[out, in]` decoded by the C code, and the input-column order it is in
    (None: natural; 4 bits: in every 32 columns the even ones, then the odd ones)."""
    out_features = qweight.shape[0]
    weight = torch.empty(out_features, in_features, dtype=torch.float32)
    _check(library().tc_dequantize(qweight.data_ptr(), out_features, in_features, scales.data_ptr(), zeros.data_ptr(),
                                   group, bits, weight.data_ptr(), torch.get_num_threads()), bits, in_features)
    return weight, (column_order(in_features) if bits == 4 else None)


@functools.cache
def column_order(in_features: int) -> Tensor:
    chunk = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    return (torch.arange(0, in_features, 32)[:, None] + chunk).reshape(-1)


def _float32(bias: Tensor | None) -> Tensor | None:
    return bias if bias is None or bias.dtype == torch.float32 else bias.float()


def _check(status: int, bits: int, in_features: int) -> None:
    if status != 0:
        raise ValueError(f"the CPU kernel refused a {bits}-bit layer of width {in_features}")


def int8_gemm(codes: Tensor, token_scale: Tensor, qweight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    """W8A8: int8 `codes` `[tokens, in]` with per-token `token_scale` `[tokens, 1]` times the
    int8 weight `qweight` `[out, in]` with per-channel fp32 `scales` `[out]`, exact in int32,
    scaled per token and channel, plus bias: the same float operations as the reference, in
    the same order."""
    codes = codes.contiguous()
    token_scale = token_scale.float().contiguous()
    out_features, in_features = qweight.shape
    out = torch.empty(codes.shape[0], out_features, dtype=torch.float32)
    bias = _float32(bias)
    library().tc_int8_gemm(codes.data_ptr(), token_scale.data_ptr(), codes.shape[0], in_features, qweight.data_ptr(),
                           scales.data_ptr(), out_features, None if bias is None else bias.data_ptr(), out.data_ptr(),
                           torch.get_num_threads())
    return out


class MultiGemv:
    """Several packed weights that read one input (q, k, v; gate, up), multiplied in one kernel
    call of up to `INT8_GEMV_TOKENS` rows: the input is rounded to int8 once and the threads
    share out all of their rows. It keeps the tensors' addresses: build it once they are final."""

    def __init__(self, qweights: list[Tensor], scales: list[Tensor], zeros: list[Tensor],
                 biases: list[Tensor | None], in_features: int, bits: int, group: int):
        count = len(qweights)
        self.in_features, self.bits, self.group = in_features, bits, group
        self.sizes = [q.shape[0] for q in qweights]
        self._args = ((ctypes.c_void_p * count)(*[q.data_ptr() for q in qweights]),
                      (ctypes.c_int * count)(*self.sizes),
                      (ctypes.c_void_p * count)(*[s.data_ptr() for s in scales]),
                      (ctypes.c_void_p * count)(*[z.data_ptr() for z in zeros]),
                      (ctypes.c_void_p * count)(*[None if b is None else b.data_ptr() for b in biases]))

    def __call__(self, rows: Tensor) -> list[Tensor]:
        """`rows` `[tokens, in]` fp32 times every weight: one `[tokens, out_i]` each."""
        rows = rows.contiguous()
        outs = [torch.empty(rows.shape[0], size, dtype=torch.float32) for size in self.sizes]
        qweights, sizes, scales, zeros, biases = self._args
        outputs = (ctypes.c_void_p * len(outs))(*[o.data_ptr() for o in outs])
        _check(library().tc_qgemv_i8_multi(rows.data_ptr(), rows.shape[0], self.in_features, len(outs), qweights,
                                           sizes, scales, zeros, biases, outputs, self.group, self.bits,
                                           torch.get_num_threads()), self.bits, self.in_features)
        return outs


def obs_sweep(rows: Tensor, factor: Tensor, start: int, stop: int, end: int, errors: Tensor,
              keep: Tensor | None, scales: Tensor | None, zeros: Tensor | None, groups: Tensor | None,
              maxq: int, codes: Tensor | None) -> bool:
    """The OBS column sweep (`solvers.obs.sweep`) in C; False (nothing done) where it cannot run:
    no kernels, or tensors that are not contiguous float32 (int32 groups, uint8 codes, bool
    mask) on CPU."""
    tensors = [t for t in (rows, factor, errors, keep, scales, zeros, groups, codes) if t is not None]
    floats = [t for t in (rows, factor, errors, scales, zeros) if t is not None]
    if (library() is None or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors)
            or any(t.dtype != torch.float32 for t in floats)
            or (groups is not None and groups.dtype != torch.int32)
            or (codes is not None and codes.dtype != torch.uint8) or (keep is not None and keep.dtype != torch.bool)):
        return False
    status = library().tc_obs_sweep(
        rows[start].data_ptr(), rows.shape[1], stop - start, end - start, factor[start, start:].data_ptr(),
        factor.shape[1], None if keep is None else keep[start].data_ptr(),
        None if scales is None else scales.data_ptr(), None if zeros is None else zeros.data_ptr(),
        None if groups is None else groups[start:].data_ptr(), maxq,
        None if codes is None else codes[start].data_ptr(), errors.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"tc_obs_sweep rejected rows {tuple(rows.shape)}, columns {start}..{stop} of {end}")
    return True


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
