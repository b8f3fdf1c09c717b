"""Slow, literal reference: W8A8: int8 rows and the integer product, as loops, written for the tests."""

from __future__ import annotations

import torch
from torch import Tensor


def int8_rows(x: Tensor) -> tuple[list[list[int]], list[Tensor]]:
    """Symmetric int8 codes of each row, one value at a time, with the row's fp32 scale max|x| / 127."""
    codes, scales = [], []
    for row in x.float():
        scale = row.abs().max() / 127
        scale = scale if scale > 0 else torch.tensor(1.0)
        codes.append([int(torch.clamp(torch.round(v / scale), -127, 127)) for v in row])
        scales.append(scale)
    return codes, scales


def w8a8_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, input_scale: Tensor | None = None) -> Tensor:
    """W8A8 as the paper writes it: int8 codes per token and per output channel, their dot
    products summed as Python integers, then token scale x channel scale (fp32) and bias."""
    x = x.reshape(-1, x.shape[-1]).float()
    if input_scale is not None:
        x = x / input_scale
    x_codes, x_scales = int8_rows(x)
    w_codes, w_scales = int8_rows(weight)
    out = torch.zeros(len(x_codes), len(w_codes))
    for t, (row, x_scale) in enumerate(zip(x_codes, x_scales)):
        for o, (column, w_scale) in enumerate(zip(w_codes, w_scales)):
            value = torch.tensor(float(sum(a * b for a, b in zip(row, column)))) * x_scale * w_scale
            out[t, o] = value if bias is None else value + bias[o].float()
    return out
