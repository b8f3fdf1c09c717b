"""Slow, literal reference: Round to nearest, one group at a time, written for the tests."""

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
