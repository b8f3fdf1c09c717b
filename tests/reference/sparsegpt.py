"""Slow, literal reference for SparseGPT, written for the tests."""

from __future__ import annotations

import torch
from torch import Tensor


def sparsegpt(w: Tensor, h: Tensor, sparsity: float, block_size: int, damp: float,
              nm: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """SparseGPT as sequential OBS, float64: columns left to right; a pruned weight's error
    goes at once onto every later column through the current inverse Hessian, then that
    column is eliminated from the inverse. No Cholesky, no lazy blocks. The mask of a block
    of columns is chosen when the block is reached, from each weight's OBS error w² / d²,
    where d² is the inverse Hessian's diagonal once the columns before it are eliminated:
    1 / d² is computed here literally, as the last diagonal entry of the inverse of the
    inverse Hessian's trailing block. Returns (weight, kept mask)."""
    w, h = w.double().clone(), h.double().clone()
    rows, cols = w.shape
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(damp * h.diagonal().mean())
    full_inverse = torch.linalg.inv(h)
    hinv = full_inverse.clone()
    kept = torch.ones(rows, cols, dtype=torch.bool)

    def pivot_squared(j: int) -> float:  # [ (H[j:, j:])^-1 ]_00 == inverse diagonal after eliminating columns < j
        return torch.linalg.inv(h[j:, j:])[0, 0].item()

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        if nm is None:
            errors = torch.stack([w[:, j] ** 2 / pivot_squared(j) for j in range(start, end)], dim=1)
            order = torch.argsort(errors.flatten(), stable=True)[: int(sparsity * errors.numel())]
            block = torch.ones(errors.numel(), dtype=torch.bool)
            block[order] = False
            kept[:, start:end] = block.view(rows, end - start)
        for j in range(start, end):
            if nm is not None and (j - start) % nm[1] == 0:
                n, m = nm
                errors = torch.stack([w[:, k] ** 2 / pivot_squared(k) for k in range(j, j + m)], dim=1)
                for r in range(rows):
                    for k in torch.argsort(errors[r], stable=True)[: m - n].tolist():
                        kept[r, j + k] = False
            value = torch.where(kept[:, j], w[:, j], torch.zeros_like(w[:, j]))
            error = (w[:, j] - value) / hinv[j, j]
            w[:, j + 1 :] -= error[:, None] * hinv[j, j + 1 :][None, :]
            w[:, j] = value
            hinv = hinv - hinv[:, j : j + 1] @ hinv[j : j + 1, :] / hinv[j, j]
    return w, kept
