"""`tc.apply(model, method, calib)`: compress a model in place with one method."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from tcompress.calib import Calibration, sequential
from tcompress.export.checkpoint import record_of
from tcompress.methods import BlockMethod, LinearMethod, Method, ModelMethod, method_from, replace_module
from tcompress.models.adapters import adapter, is_linear


def apply(model: nn.Module, method: Method | dict[str, Any], calib: Calibration | None = None, *,
          batch_size: int = 1, device: torch.device | str | None = None, progress: bool = True) -> nn.Module:
    """Apply `method` to `model` in place and record it; returns the model.

    `calib` is calibration data (token ids `[n, seqlen]` or a list of model inputs); the
    methods that need none ignore it. Blocks are processed one at a time, each on the
    outputs of the already compressed blocks before it.
    """
    if isinstance(method, dict):
        method = method_from(method)
    if not isinstance(method, Method):
        raise TypeError(f"method must be a tcompress method config, got {type(method).__name__}")
    if method.needs_data and calib is None:
        raise ValueError(f"method {method.name!r} needs calibration data: pass calib (e.g. tc.data.calibration(...))")
    if isinstance(method, LinearMethod):
        _check_targets(model, method)
    if isinstance(method, ModelMethod):
        method.check(model)
    with torch.no_grad():
        if isinstance(method, ModelMethod):
            method.apply_model(model, calib, progress=progress)
        elif method.needs_data:
            sequential(model, calib, method, batch_size=batch_size, device=device, progress=progress)
        elif isinstance(method, LinearMethod):
            _apply_without_data(model, method)
        else:
            raise TypeError(f"method {method.name!r} needs no data but is not a per-linear method")
    record_of(model).applied.append(method.to_dict())
    return model


def _targets(model: nn.Module, method: LinearMethod) -> dict[str, nn.Module]:
    """The linears `method` may change: every block's, and the output head if it asks."""
    linears = {name: linear for block in adapter(model).blocks() for name, linear in block.linears.items()}
    if getattr(method, "head", False):
        name, head = head_of(model, method)
        linears[name] = head
    return linears


def head_of(model: nn.Module, method: Method) -> tuple[str, nn.Module]:
    """The output head `method` is to quantize, or a clear error why it cannot."""
    parts = adapter(model)
    hit = parts.head()
    if hit is None or not is_linear(hit[1]):
        raise ValueError(f"{method.name}: head=True, but this model has no linear output head")
    if method.needs_data and isinstance(method, BlockMethod):
        raise ValueError(f"{method.name}: head=True is not supported by this method; quantize the head in a stage "
                         f"of its own, e.g. {{method: gptq, head: true, include: [{hit[0]}]}}")
    if method.needs_data and parts.final_norm() is None:
        raise ValueError(f"{method.name}: head=True needs the head's calibration inputs, but the {parts.name} adapter "
                         f"does not know the norm before the head")
    return hit


def replace_head(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put the quantized head in place; a head tied to the input embeddings is untied (the
    embeddings stay float)."""
    replace_module(model, name, new)
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False


def _selected(model: nn.Module, method: LinearMethod, linears: dict[str, nn.Module] | None = None
              ) -> dict[str, nn.Module]:
    linears = _targets(model, method) if linears is None else linears
    return {name: linear for name, linear in linears.items() if method.selects(name, linear)}


def _check_targets(model: nn.Module, method: LinearMethod) -> None:
    """Every pattern must name some linear, and something must be left to change."""
    linears = _targets(model, method)
    names = list(linears)
    for field in ("include", "exclude"):
        for pattern in getattr(method, field, ()):
            if not any(fnmatch.fnmatch(name, pattern) for name in names):
                example = names[0] if names else "(none)"
                raise ValueError(f"{method.name}: {field} pattern {pattern!r} matches no linear (they are named like "
                                 f"{example!r})")
    targets = _selected(model, method, linears)
    if not targets:
        raise ValueError(f"method {method.name!r} selects no linear of this model (check `include` / `exclude`)")
    for name, linear in targets.items():
        method.check(name, linear)


def _apply_without_data(model: nn.Module, method: LinearMethod) -> None:
    head = head_of(model, method)[0] if getattr(method, "head", False) else None
    for name, linear in _selected(model, method).items():
        new = method.apply(linear, method.init_stats(linear), name)
        if new is not None and new is not linear:
            (replace_head if name == head else replace_module)(model, name, new)
