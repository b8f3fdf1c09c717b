"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row (Sun et al., 2023,
arXiv:2306.11695). The input norms come from calibration data; the weights kept are not
updated. Through the engine each linear is scored on the inputs it gets in the model
pruned so far (the blocks before it and the linears before it in its block)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.engine.method import register
from tcompress.packed.sparse import SparseLinear
from tcompress.prune.base import Pruner


@dataclass
class InputNorms:
    squares: Tensor  # sum over tokens of x_j^2, [in], float32


@register
@dataclass(frozen=True)
class Wanda(Pruner):
    """Wanda: prune by |w| times the input channel's norm, compared within each output row."""

    name = "wanda"
    true_sequential = True
    input_only_stats = True

    def init_stats(self, linear: nn.Module) -> InputNorms:
        n = self.weight_of(linear).shape[1]
        return InputNorms(torch.zeros(n, dtype=torch.float32, device=linear.weight.device))

    def observe(self, stats: InputNorms, x: Tensor) -> InputNorms:
        stats.squares += x.float().pow(2).sum(dim=0)
        return stats

    def apply(self, linear: nn.Module, stats: InputNorms, name: str) -> SparseLinear:
        w = self.weight_of(linear)
        scores = w.abs().float() * stats.squares.sqrt()[None, :]
        return self.pack(linear, w * self.mask(scores, name, per_row=True))
