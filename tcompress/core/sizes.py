"""Sizes, each defined once: parameters, bytes in memory, bytes of the weight files on disk."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from torch import nn

from tcompress.core.modules import is_linear


def parameter_count(model: nn.Module) -> int:
    """Parameters, tied ones counted once (packed codes are buffers, not parameters)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers in memory, shared storage counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype, tensor.shape)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes on disk of a saved model: its weight files (`*.safetensors`)."""
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def module_kind(module: nn.Module) -> str:
    """'linear', 'embedding', 'norm', 'conv' or 'other'."""
    if is_linear(module):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
        return "norm"  # HF families define their own RMSNorm classes
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    return "other"


def parameters_by_kind(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(parameters, bytes) per module kind, tied weights counted once where first seen."""
    seen: set[int] = set()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            totals[module_kind(module)][0] += tensor.numel() if isinstance(tensor, nn.Parameter) else 0
            totals[module_kind(module)][1] += tensor.numel() * tensor.element_size()
    return {kind: (count, size) for kind, (count, size) in totals.items()}
