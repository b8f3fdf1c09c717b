"""A literal, slow token merge (ToMe's bipartite soft matching), one image at a time: the
first `protected` tokens stay first; the rest alternate between the sets a and b."""

from __future__ import annotations

import torch
from torch import Tensor


def merge(x: Tensor, metric: Tensor, sizes: Tensor, r: int, protected: int) -> tuple[Tensor, Tensor]:
    """x `[n, d]`, metric `[n, k]`, sizes `[n]`: the merged tokens and their sizes."""
    n = x.shape[0]
    a_idx, b_idx = list(range(protected, n, 2)), list(range(protected + 1, n, 2))
    unit = metric / metric.norm(dim=-1, keepdim=True)
    candidates = []
    for i in a_idx:
        scores = [float(unit[i] @ unit[j]) for j in b_idx]
        best = max(range(len(b_idx)), key=lambda k: scores[k])
        candidates.append((scores[best], i, b_idx[best]))
    candidates.sort(key=lambda c: -c[0])
    merged = {i: j for _, i, j in candidates[:r]}
    total = {j: x[j] * sizes[j] for j in b_idx}
    size = {j: sizes[j].clone() for j in b_idx}
    for i, j in merged.items():
        total[j] = total[j] + x[i] * sizes[i]
        size[j] = size[j] + sizes[i]
    kept = [i for i in a_idx if i not in merged]
    first = list(range(protected))
    tokens = [x[i] for i in first + kept] + [total[j] / size[j] for j in b_idx]
    counts = [sizes[i] for i in first + kept] + [size[j] for j in b_idx]
    return torch.stack(tokens), torch.stack(counts)
