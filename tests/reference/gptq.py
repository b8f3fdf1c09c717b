"""Slow, literal reference: GPTQ as sequential OBS, written for the tests."""

from __future__ import annotations

import torch
from torch import Tensor

from tcompress.packed.grid import group_grid


def gptq(w: Tensor, h: Tensor, grid, damp: float, act_order: bool) -> Tensor:
    """GPTQ as sequential OBS: quantize one column, spread its error over the remaining
    columns with the current inverse Hessian, then eliminate that column from the inverse.
    No Cholesky, no blocks; float64."""
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
