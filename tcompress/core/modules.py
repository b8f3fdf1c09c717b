"""Module surgery: what a linear is, its weight as `[out, in]`, and putting a module in place."""

from __future__ import annotations

import sys

from torch import Tensor, nn


def conv1d_type() -> type | tuple:
    """transformers' `Conv1D` (GPT-2's linears) once transformers' model code is loaded, else
    an empty tuple: no model can hold one before, and tcompress imports without transformers."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", ())


def is_linear(module: nn.Module) -> bool:
    """True for `nn.Linear` and GPT-2's `Conv1D` (a linear stored transposed)."""
    return isinstance(module, (nn.Linear, conv1d_type()))


def linear_weight(module: nn.Module) -> Tensor:
    """The weight of a linear as `[out, in]`, a view (Conv1D stores `[in, out]`)."""
    return module.weight.t() if isinstance(module, conv1d_type()) else module.weight


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` of `root` is."""
    if not name:
        raise ValueError(f"cannot replace the root module itself by a {type(new).__name__}: wrap it in a module")
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
