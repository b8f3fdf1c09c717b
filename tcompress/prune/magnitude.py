"""Magnitude pruning: drop the weights of smallest |w|, compared across each linear (or
within each group of M for N:M). Needs no data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from tcompress.methods import register
from tcompress.prune.base import Pruner
from tcompress.prune.sparse import SparseLinear


@register
@dataclass(frozen=True)
class Magnitude(Pruner):
    name = "magnitude"
    needs_data = False

    def apply(self, linear: nn.Module, stats: Any, name: str) -> SparseLinear:
        w = self.weight_of(linear)
        return self.pack(linear, w * self.mask(w.abs().float(), name, per_row=False))
