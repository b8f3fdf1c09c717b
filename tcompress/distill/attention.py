"""Attention transfer: match how the teacher's attention mixes tokens.

- `AttentionKD` (TinyBERT, Jiao et al., 2020, arXiv:1909.10351): KL between the
  teacher's and the student's attention distributions, per head, over a layer map. Where
  head counts differ (a head-pruned student), the head-averaged distributions are compared.
- `ValueRelationKD` (MiniLM, Wang et al., 2020, arXiv:2002.10957): KL between value
  relations softmax(V V^T / sqrt(d)) of one layer (the last by default), with the values
  split into the same number of relation heads in both models, so widths may differ.
  Relations span every position pair, as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.distill.base import DistillLoss, Outputs, block_count, layer_map, wide
from tcompress.distill.forward import value_width


def distribution_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(teacher || student) between distributions over the last dim, averaged over the
    other dims. Inputs are probabilities; positions the teacher gives 0 add nothing."""
    teacher, student = wide(teacher), wide(student)
    return (torch.xlogy(teacher, teacher) - torch.xlogy(teacher, student.clamp(min=1e-12))).sum(-1).mean()


def value_relation(values: Tensor, heads: int) -> Tensor:
    """softmax(V V^T / sqrt(d)) per relation head: values `[b, s, width]` -> `[b, heads, s, s]`."""
    b, s, width = values.shape
    v = wide(values).view(b, s, heads, width // heads).transpose(1, 2)  # [b, heads, s, d]
    return torch.softmax(v @ v.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)


class AttentionKD(DistillLoss):
    """KL between attention distributions over a layer map (layers count from 0)."""

    name = "attention"
    needs = ("attentions",)

    def __init__(self, weight: float = 1.0, layers: str | list | dict = "uniform"):
        super().__init__(weight)
        self.layers = layers
        self.pairs: list[tuple[int, int]] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.pairs = layer_map(self.layers, block_count(student), block_count(teacher), "attention", first=0)

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        losses = []
        for s, t in self.pairs:
            s_map, t_map = student.attentions[s], teacher.attentions[t]  # [b, heads, q, k]
            if s_map.shape[1] != t_map.shape[1]:
                s_map, t_map = s_map.mean(1), t_map.mean(1)
            losses.append(distribution_kl(t_map, s_map))
        return torch.stack(losses).mean()


class ValueRelationKD(DistillLoss):
    """KL between value relations of one student and one teacher layer (default: the last)."""

    name = "value"
    needs = ("values",)

    def __init__(self, weight: float = 1.0, layers: str | list | dict = "last", heads: int | None = None):
        super().__init__(weight)
        if heads is not None and (not isinstance(heads, int) or heads <= 0):
            raise ValueError(f"value loss: heads must be a positive integer, got {heads!r}")
        self.layers, self.heads = layers, heads
        self.pairs: list[tuple[int, int]] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.pairs = layer_map(self.layers, block_count(student), block_count(teacher), "value", first=0)
        config = teacher.config
        if self.heads is None:
            self.heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        for model, role in ((student, "student"), (teacher, "teacher")):
            width = value_width(model)
            if width % self.heads:
                raise ValueError(f"value loss: the {role}'s values ({width} wide) do not split into {self.heads} "
                                 f"relation heads; pass heads= a divisor of both models' value widths")

    def value_layers(self) -> tuple[list[int], list[int]]:
        return [s for s, _ in self.pairs], [t for _, t in self.pairs]

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        losses = [distribution_kl(value_relation(teacher.values[t], self.heads),
                                  value_relation(student.values[s], self.heads)) for s, t in self.pairs]
        return torch.stack(losses).mean()
