"""What every distillation loss shares: a weight, the model outputs it reads, and a name.

A loss is a small `nn.Module` (hint losses own learnable projections, which train with the
student). The trainer runs student and teacher once per batch, asking each for the union
of what its losses need, and hands every loss both outputs as `Outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from tcompress.models.adapters import adapter

NEEDS = ("logits", "hidden_states", "attentions", "values")


@dataclass
class Outputs:
    """One forward pass: `logits` `[b, s, vocab]`, `hidden_states` (embeddings, then each
    block's output) `[b, s, d]`, `attentions` per block `[b, heads, s, s]`, `values`
    (each block's attention values, by block index) `[b, s, d_v]`."""

    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] = ()
    attentions: tuple[Tensor, ...] = ()
    values: dict[int, Tensor] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """Base of the losses: `forward(student, teacher, ids)` returns a scalar."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()  # from NEEDS
    needs_teacher: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if not weight > 0:
            raise ValueError(f"{self.name} loss: weight must be positive, got {weight!r}")
        self.weight = float(weight)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Check the pair fits this loss and build what it learns (before any training)."""

    def value_layers(self) -> tuple[list[int], list[int]]:
        """Blocks whose attention values (student, teacher) this loss reads."""
        return [], []

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        raise NotImplementedError


def wide(x: Tensor) -> Tensor:
    """`x` in at least float32 (losses are computed there; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def block_count(model: nn.Module) -> int:

    return len(adapter(model).blocks())


def layer_map(spec: str | list | tuple | dict, student_layers: int, teacher_layers: int, what: str,
              first: int = 1) -> list[tuple[int, int]]:
    """Pairs (student layer, teacher layer): `"uniform"` maps student layer i of S to
    teacher layer round(i * T / S); `"last"` pairs the last layers; or explicit pairs
    (a dict, a list of pairs, or text "1:2,2:4"). Layers count from `first`."""
    if spec == "uniform":
        return [(i, first - 1 + round((i - first + 1) * teacher_layers / student_layers))
                for i in range(first, first + student_layers)]
    if spec == "last":
        return [(first + student_layers - 1, first + teacher_layers - 1)]
    if isinstance(spec, str):
        try:
            spec = [tuple(int(x) for x in pair.split(":")) for pair in spec.split(",") if pair]
        except ValueError:
            raise ValueError(f"{what} layer map {spec!r}: expected 'uniform', 'last' or pairs like '2:4,4:8'") from None
    pairs = list(spec.items()) if isinstance(spec, dict) else [tuple(p) for p in spec]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{what} layer map {spec!r}: expected 'uniform', 'last' or (student, teacher) pairs")
    for s, t in pairs:
        if not first <= s < first + student_layers:
            raise ValueError(f"{what} layer map names student layer {s}, but the student has layers "
                             f"{first}..{first + student_layers - 1}")
        if not first <= t < first + teacher_layers:
            raise ValueError(f"{what} layer map names teacher layer {t}, but the teacher has layers "
                             f"{first}..{first + teacher_layers - 1}")
    return [(int(s), int(t)) for s, t in pairs]
