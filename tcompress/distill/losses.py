"""The losses by name, and `parse_losses("kl:1.0,hidden:0.5")` for the CLI and recipes."""

from __future__ import annotations

from tcompress.distill.attention import AttentionKD, ValueRelationKD
from tcompress.distill.base import DistillLoss
from tcompress.distill.hidden import HiddenKD
from tcompress.distill.logits import LanguageModelLoss, LogitKD

LOSSES: dict[str, type[DistillLoss]] = {cls.name: cls for cls in
                                        (LogitKD, LanguageModelLoss, HiddenKD, AttentionKD, ValueRelationKD)}


def parse_losses(text: str, **options: dict) -> list[DistillLoss]:
    """Losses from `name:weight,...`; `options[name]` are keyword arguments of that loss."""
    losses = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"loss {item!r}: the weight after ':' must be a number") from None
        losses.append(LOSSES[name](weight=value, **options.get(name, {})))
    if not losses:
        raise ValueError(f"no loss in {text!r}: expected e.g. 'kl:1.0,hidden:0.5'")
    return losses
