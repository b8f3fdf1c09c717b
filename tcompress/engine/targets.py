"""Which linears a method changes: every block's linear it selects, and the output head if
it asks (`head=True`), checked before any work."""

from __future__ import annotations

import fnmatch

from torch import nn

from tcompress.core.modules import is_linear, replace_module
from tcompress.engine.method import BlockMethod, LinearMethod
from tcompress.models.adapters import adapter

Targeted = LinearMethod | BlockMethod


def targets(model: nn.Module, method: Targeted) -> dict[str, nn.Module]:
    """The linears `method` may change: every block's, and the output head if it asks."""
    linears = {name: linear for block in adapter(model).blocks() for name, linear in block.linears.items()}
    if method.head:
        name, head = head_of(model, method)
        linears[name] = head
    return linears


def head_of(model: nn.Module, method: Targeted) -> tuple[str, nn.Module]:
    """The output head `method` is to change, or a clear error why it cannot."""
    parts = adapter(model)
    hit = parts.head()
    if hit is None or not is_linear(hit[1]):
        raise ValueError(f"{method.name}: head=True, but this model has no linear output head")
    if isinstance(method, BlockMethod):
        raise ValueError(f"{method.name}: head=True is not supported by this method; quantize the head in a stage "
                         f"of its own, e.g. {{method: gptq, head: true, include: [{hit[0]}]}}")
    if method.needs_data and parts.final_norm() is None:
        raise ValueError(f"{method.name}: head=True needs the head's calibration inputs, but the {parts.name} adapter "
                         f"does not know the norm before the head")
    return hit


def replace_head(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put the changed head in place; a head tied to the input embeddings is untied (the
    embeddings stay float)."""
    replace_module(model, name, new)
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False


def selected(model: nn.Module, method: Targeted, linears: dict[str, nn.Module] | None = None
             ) -> dict[str, nn.Module]:
    """The linears `method` changes: its targets that its `include` / `exclude` select."""
    linears = targets(model, method) if linears is None else linears
    return {name: linear for name, linear in linears.items() if method.selects(name, linear)}


def check_targets(model: nn.Module, method: Targeted) -> None:
    """Every pattern must name some linear, something must be left to change, and every
    selected linear must take the method."""
    linears = targets(model, method)
    names = list(linears)
    for field in ("include", "exclude"):
        for pattern in getattr(method, field):
            if not any(fnmatch.fnmatch(name, pattern) for name in names):
                example = names[0] if names else "(none)"
                raise ValueError(f"{method.name}: {field} pattern {pattern!r} matches no linear (they are named like "
                                 f"{example!r})")
    chosen = selected(model, method, linears)
    if not chosen:
        raise ValueError(f"method {method.name!r} selects no linear of this model (check `include` / `exclude`)")
    for name, linear in chosen.items():
        method.check(name, linear)
