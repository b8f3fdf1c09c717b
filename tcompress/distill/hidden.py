"""Hint distillation (FitNets, Romero et al., 2015, arXiv:1412.6550): match the teacher's
hidden states at chosen layers.

Where widths differ, a learnable linear projection maps the student's states to the
teacher's width (trained with the student, dropped afterwards). Layers pair up by a map:
"uniform" (student layer i of S with teacher layer i * T / S), "last", or given pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.distill.base import DistillLoss, Outputs, block_count, layer_map, wide

METRICS = ("mse", "cosine")


def hidden_loss(student: Tensor, teacher: Tensor, metric: str) -> Tensor:
    """MSE or (1 - cosine similarity), averaged over positions. States `[..., d]`."""
    if metric == "mse":
        return nn.functional.mse_loss(wide(student), wide(teacher))
    return (1 - nn.functional.cosine_similarity(wide(student), wide(teacher), dim=-1)).mean()


class HiddenKD(DistillLoss):
    """Distance between student and teacher hidden states over a layer map."""

    name = "hidden"
    needs = ("hidden_states",)

    def __init__(self, weight: float = 1.0, metric: str = "mse", layers: str | list | dict = "uniform"):
        super().__init__(weight)
        if metric not in METRICS:
            raise ValueError(f"hidden loss: metric must be one of {METRICS}, got {metric!r}")
        self.metric, self.layers = metric, layers
        self.pairs: list[tuple[int, int]] = []
        self.projections = nn.ModuleList()

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        s_layers, t_layers = block_count(student), block_count(teacher)
        self.pairs = layer_map(self.layers, s_layers, t_layers, "hidden", first=1)
        s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
        self.projections = nn.ModuleList(
            [nn.Identity() if s_width == t_width else nn.Linear(s_width, t_width, bias=False) for _ in self.pairs])
        for projection in self.projections:
            if isinstance(projection, nn.Linear):
                nn.init.normal_(projection.weight, std=s_width**-0.5)

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        losses = [hidden_loss(projection(student.hidden_states[s]), teacher.hidden_states[t], self.metric)
                  for (s, t), projection in zip(self.pairs, self.projections)]
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight}, metric={self.metric}, pairs={self.pairs}"

