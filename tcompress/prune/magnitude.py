"""Magnitude pruning: drop the weights of smallest |w|, compared across each linear (or
within each group of M for N:M). Needs no data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from tcompress.engine.method import register
from tcompress.packed.sparse import SparseLinear
from tcompress.prune.base import Pruner


@register
@dataclass(frozen=True)
class Magnitude(Pruner):
    """Magnitude pruning: the weights of smallest |w| across each linear go; no data."""

    name = "magnitude"
    needs_data = False

    def apply(self, linear: nn.Module, stats: Any, name: str) -> SparseLinear:
        w = self.weight_of(linear)
        return self.pack(linear, w * self.mask(w.abs().float(), name, per_row=False))
