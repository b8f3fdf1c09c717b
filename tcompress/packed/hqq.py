"""HQQ's zero-point solver (Badri & Shaji, 2023, "Half-Quadratic Quantization of Large
Machine Learning Models"), a grid search used by every weight quantizer (`search="hqq"`).

It minimises ||W - dequant(quant(W))||_p with p < 1, a norm that tolerates a few large
errors (outliers) in exchange for small errors everywhere else, by half-quadratic
splitting: an auxiliary error E is found by a generalised soft-threshold (the proximal
step of the l_p norm), then the zero point has a closed form given E. The scale stays at
its min-max value; the zero becomes fractional, which the packed format stores in fp16.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shrink_lp(x: Tensor, beta: float, p: float) -> Tensor:
    """Proximal operator of |x|^p / beta (the generalised soft-threshold)."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().clamp(min=1e-12).pow(p - 1) / beta)


def hqq_zero(w: Tensor, scale: Tensor, zero: Tensor, maxq: int, *, p: float = 0.7, beta: float = 10.0,
             kappa: float = 1.01, iterations: int = 20) -> Tensor:
    """Zero points `[rows]` for rows `w` `[rows, cols]` with fixed `scale` `[rows]`."""
    scale, zero = scale[:, None], zero[:, None].clone()
    best_zero, best_error = zero.clone(), torch.full_like(zero, float("inf"))
    for _ in range(iterations):
        q = torch.clamp(torch.round(w / scale + zero), 0, maxq)
        restored = (q - zero) * scale
        error = (w - restored).abs().mean(dim=1, keepdim=True)
        better = error < best_error
        best_error, best_zero = torch.where(better, error, best_error), torch.where(better, zero, best_zero)
        e = shrink_lp(w - restored, beta, p)
        zero = (q - (w - e) / scale).mean(dim=1, keepdim=True)
        beta *= kappa
    return best_zero[:, 0]
