"""Logit distillation (Hinton et al., 2015, arXiv:1503.02531): match the teacher's softened
next-token distribution.

Forward KL(teacher || student) makes the student cover every mode of the teacher; reverse
KL(student || teacher) (MiniLLM, Gu et al., 2023) makes it commit to the teacher's main
modes. Both are scaled by T^2 so gradients keep their size across temperatures; the
hard-label (next-token cross-entropy) loss can be mixed in with its own weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.distill.base import DistillLoss, Outputs, wide

DIRECTIONS = ("forward", "reverse")


def kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
            direction: str = "forward") -> Tensor:
    """Mean over positions of KL between softened distributions, times T^2.
    Logits `[..., vocab]`."""
    log_s = torch.log_softmax(wide(student_logits) / temperature, dim=-1)
    log_t = torch.log_softmax(wide(teacher_logits) / temperature, dim=-1)
    if direction == "forward":
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    else:
        kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    return kl.mean() * temperature**2


def next_token_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Cross-entropy of each position's logits against the next token id."""
    return nn.functional.cross_entropy(wide(logits[:, :-1].flatten(0, 1)), ids[:, 1:].flatten())


class LogitKD(DistillLoss):
    """KL between student and teacher logits at temperature `temperature`, plus
    `hard_label` times the next-token loss on the data."""

    name = "kl"
    needs = ("logits",)

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, direction: str = "forward",
                 hard_label: float = 0.0):
        super().__init__(weight)
        if direction not in DIRECTIONS:
            raise ValueError(f"kl loss: direction must be one of {DIRECTIONS}, got {direction!r}")
        if not temperature > 0:
            raise ValueError(f"kl loss: temperature must be positive, got {temperature!r}")
        if hard_label < 0:
            raise ValueError(f"kl loss: hard_label must be >= 0, got {hard_label!r}")
        self.temperature, self.direction, self.hard_label = float(temperature), direction, float(hard_label)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        s, t = _vocab_size(student), _vocab_size(teacher)
        if s is not None and t is not None and s != t:
            raise ValueError(f"kl loss compares logits over one vocabulary, but the student's has {s} entries and "
                             f"the teacher's {t}: use a teacher with the student's tokenizer, or the hidden "
                             f"or lm losses")

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        loss = kl_loss(student.logits, teacher.logits, self.temperature, self.direction)
        if self.hard_label:
            if ids.is_floating_point():
                raise ValueError("kl loss: hard_label is the next-token loss, for token data; images have no labels here")
            loss = loss + self.hard_label * next_token_loss(student.logits, ids)
        return loss

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}, direction={self.direction}"


class LanguageModelLoss(DistillLoss):
    """The plain next-token loss on the data (teacher-generated text, say); no teacher."""

    name = "lm"
    needs = ("logits",)
    needs_teacher = False

    def forward(self, student: Outputs, teacher: Outputs | None, ids: Tensor) -> Tensor:
        return next_token_loss(student.logits, ids)


def _vocab_size(model: nn.Module | None) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return head.weight.shape[0]
    return getattr(getattr(model, "config", None), "vocab_size", None)
