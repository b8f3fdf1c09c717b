"""Slow, literal references for the quantizers, written for the tests."""

from __future__ import annotations

import torch
from torch import Tensor


def rtn(w: Tensor, bits: int, group_size: int, symmetric: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest, one group at a time, with fp16-stored scale and zero."""
    maxq = 2**bits - 1
    out_features, in_features = w.shape
    codes = torch.zeros(out_features, in_features, dtype=torch.uint8)
    groups = in_features // group_size
    scales, zeros = torch.zeros(out_features, groups), torch.zeros(out_features, groups)
    for r in range(out_features):
        for g in range(groups):
            values = w[r, g * group_size : (g + 1) * group_size].double()
            if symmetric:
                high = values.abs().max().item()
                low = -high
            else:
                low, high = min(values.min().item(), 0.0), max(values.max().item(), 0.0)
            scale = (high - low) / maxq if high > low else 1.0
            zero = 2 ** (bits - 1) if symmetric else round(-low / scale)
            scale = float(torch.tensor(scale).clamp(min=2**-24).half())
            zero = float(torch.tensor(float(zero)).half())
            for c in range(group_size):
                q = round(values[c].item() / scale) + zero
                codes[r, g * group_size + c] = int(min(max(q, 0), maxq))
            scales[r, g], zeros[r, g] = scale, zero
    return codes, scales, zeros


def gptq(w: Tensor, h: Tensor, grid, damp: float, act_order: bool) -> Tensor:
    """GPTQ as sequential OBS: quantize one column, spread its error over the remaining
    columns with the current inverse Hessian, then eliminate that column from the inverse.
    No Cholesky, no blocks; float64."""
    from tcompress.quantize.gptq import group_grid

    w, h = w.double().clone(), h.double().clone()
    in_features = w.shape[1]
    size = grid.group_size or in_features
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    grids = {}
    if act_order:
        for start in range(0, in_features, size):
            grids[start // size] = group_grid(w[:, start : start + size], grid)
    order = torch.argsort(h.diagonal(), descending=True).tolist() if act_order else list(range(in_features))
    h.diagonal().add_(damp * h.diagonal().mean())
    hinv = torch.linalg.inv(h)
    codes = torch.zeros_like(w)
    remaining = list(order)
    for column in order:
        remaining.remove(column)
        group = column // size
        if not act_order and column % size == 0:
            grids[group] = group_grid(w[:, column : column + size], grid)
        scale, zero = grids[group]
        q = torch.clamp(torch.round(w[:, column] / scale + zero), 0, grid.maxq)
        codes[:, column] = q
        error = (w[:, column] - (q - zero) * scale) / hinv[column, column]
        w[:, remaining] -= error[:, None] * hinv[column, remaining][None, :]
        hinv = hinv - hinv[:, column : column + 1] @ hinv[column : column + 1, :] / hinv[column, column]
    return codes.to(torch.uint8)


def hqq_zero(row: Tensor, scale: float, zero: float, maxq: int, p=0.7, beta=10.0, kappa=1.01, iterations=20) -> float:
    """HQQ's zero-point iteration for one row, element by element."""
    best_zero, best_error = zero, float("inf")
    for _ in range(iterations):
        q = [min(max(round(v / scale + zero), 0), maxq) for v in row.tolist()]
        restored = [(c - zero) * scale for c in q]
        residual = [v - r for v, r in zip(row.tolist(), restored)]
        error = sum(abs(r) for r in residual) / len(residual)
        if error < best_error:
            best_zero, best_error = zero, error
        shrunk = [(1 if r > 0 else -1 if r < 0 else 0) * max(abs(r) - max(abs(r), 1e-12) ** (p - 1) / beta, 0.0)
                  for r in residual]
        zero = sum(c - (v - e) / scale for c, v, e in zip(q, row.tolist(), shrunk)) / len(q)
        beta *= kappa
    return best_zero


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
