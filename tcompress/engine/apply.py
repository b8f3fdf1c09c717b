"""`tc.apply(model, method, calib)`: compress a model in place with one method, and record it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from tcompress.checkpoint.lazy import require_materialized, streamed
from tcompress.checkpoint.record import record_of
from tcompress.core.modules import replace_module
from tcompress.engine.inputs import Calibration
from tcompress.engine.method import LinearMethod, Method, ModelMethod, method_from
from tcompress.engine.sequential import CHUNK_TOKENS, sequential
from tcompress.engine.targets import check_targets, head_of, replace_head, selected
from tcompress.models.adapters import adapter


def apply(model: nn.Module, method: Method | dict[str, Any], calib: Calibration | None = None, *,
          batch_size: int = 1, device: torch.device | str | None = None, progress: bool = True,
          chunk_tokens: int = CHUNK_TOKENS) -> nn.Module:
    """Apply `method` to `model` in place and record it; returns the model.

    `calib` is calibration data (token ids `[n, seqlen]` or a list of model inputs); the
    methods that need none ignore it. Blocks are processed one at a time, each on the
    outputs of the already compressed blocks before it; a per-linear method runs each over
    the calibration batches in chunks of about `chunk_tokens` tokens (fewer: less memory).
    """
    if isinstance(method, dict):
        method = method_from(method)
    if not isinstance(method, Method):
        raise TypeError(f"method must be a tcompress method config, got {type(method).__name__}")
    if method.needs_data and calib is None:
        raise ValueError(f"method {method.name!r} needs calibration data: pass calib (e.g. tc.data.calibration(...))")
    if isinstance(method, ModelMethod):
        require_materialized(model, f"method {method.name!r} (it changes the whole model at once)")
        method.check(model)
    else:
        check_targets(model, method)
    with torch.no_grad():
        if isinstance(method, ModelMethod):
            method.apply_model(model, calib, progress=progress)
        elif method.needs_data:
            sequential(model, calib, method, batch_size=batch_size, device=device, progress=progress,
                       chunk_tokens=chunk_tokens)
        else:  # a LinearMethod (register refuses block methods without data)
            change_each_linear(model, method)
    record_of(model).applied.append(method.to_dict())
    return model


def change_each_linear(model: nn.Module, method: LinearMethod) -> None:
    """Apply a calibration-free per-linear method to every linear it selects, a block at a
    time (not recorded: `apply` records, or the method that uses this as one of its steps)."""
    head = head_of(model, method)[0] if method.head else None
    chosen = selected(model, method)
    for block, names in by_block(model, list(chosen)).items():
        with streamed(model, block) if block else contextlib.nullcontext():
            for name in names:
                linear = model.get_submodule(name)
                new = method.apply(linear, method.init_stats(linear), name)
                if new is not None and new is not linear:
                    (replace_head if name == head else replace_module)(model, name, new)


def by_block(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """`names` by the block that holds them, in the blocks' order; "" for those outside every block."""
    blocks = [block.name for block in adapter(model).blocks()] if adapter(model).blocks_name else []
    grouped: dict[str, list[str]] = {block: [] for block in blocks}
    grouped[""] = []
    for name in names:
        holder = next((block for block in blocks if name.startswith(block + ".")), "")
        grouped[holder].append(name)
    return {block: names for block, names in grouped.items() if names}
