"""Slow, literal reference: HQQ's zero-point iteration, element by element, written for the tests."""

from __future__ import annotations

from torch import Tensor


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
