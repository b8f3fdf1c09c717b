"""Which weights to keep: sparsity masks as pure functions of per-weight scores.

A mask is a bool tensor shaped like the scores, True where a weight is kept. The higher a
score, the more the weight matters. The number pruned is exact: ties are broken by
position, never by keeping every tied weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


def parse_pattern(pattern: str) -> tuple[int, int]:
    """`"N:M"` -> (N, M): at most N nonzero weights in every M consecutive inputs of a row."""
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r}: need 0 < N < M (N weights kept in every M), got N={n}, M={m}")
    return n, m


def check_sparsity(sparsity: float, what: str = "sparsity") -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{what} must be a fraction in [0, 1), got {sparsity!r}")


def lowest(scores: Tensor, count: int, dim: int) -> Tensor:
    """Bool mask of the `count` lowest scores along `dim` (True: among the lowest)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        mask.scatter_(dim, torch.topk(scores, count, dim=dim, largest=False, sorted=False).indices, True)
    return mask


def keep_mask(scores: Tensor, sparsity: float, per_row: bool) -> Tensor:
    """Keep all but the lowest `sparsity` share of scores, compared within each row of
    `scores` `[rows, cols]` (`per_row`) or across the whole tensor."""
    if per_row:
        return ~lowest(scores, int(sparsity * scores.shape[1]), dim=1)
    flat = scores.reshape(1, -1)
    return ~lowest(flat, int(sparsity * flat.shape[1]), dim=1).view_as(scores)


def nm_keep_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the `n` highest of every `m` consecutive scores along each row of `[rows, cols]`."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"an {n}:{m} pattern needs the input dimension to be a multiple of {m}, got {cols}")
    return ~lowest(scores.reshape(rows, cols // m, m), m - n, dim=2).view(rows, cols)
