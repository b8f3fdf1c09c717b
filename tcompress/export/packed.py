"""Packed modules (QuantLinear, Int8Linear, SparseLinear, activation quantizers) in a saved folder: their layouts go into
`tcompress.json`, their buffers into the safetensors files, and loading rebuilds the model
with the packed modules in place, so a 4-bit model stays 4-bit in memory and on disk."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn

from tcompress.methods import replace_module
from tcompress.prune.sparse import SparseLinear
from tcompress.quantize.activations import ActQuantizer
from tcompress.quantize.embedding import QuantEmbedding
from tcompress.quantize.formats import QuantLinear
from tcompress.quantize.int8 import Int8Linear

PACKED_MODULES: dict[str, type[nn.Module]] = {module.format: module for module in (
    QuantLinear, Int8Linear, SparseLinear, ActQuantizer, QuantEmbedding)}


def packed_layouts(model: nn.Module) -> dict[str, dict]:
    """`{module name: {"format": ..., shape fields}}` for every packed module of `model`."""
    classes = tuple(PACKED_MODULES.values())
    return {name: {"format": module.format, **module.layout()}
            for name, module in model.named_modules() if isinstance(module, classes)}


def load_packed(model_class: type, config, folder: Path, layouts: dict[str, dict], dtype: torch.dtype) -> nn.Module:
    """Build `model_class` from `config` with the packed modules of `layouts`, then load the
    folder's tensors into it (nothing is initialised twice, nothing unpacked)."""
    dtype = config.dtype if dtype == "auto" else dtype
    with init_empty_weights(include_buffers=False):
        model = model_class._from_config(config, dtype=dtype)
    for name, layout in layouts.items():
        if layout.get("format") not in PACKED_MODULES:
            raise ValueError(f"{str(folder)!r}: module {name!r} has unknown packed format {layout.get('format')!r}")
        with init_empty_weights(include_buffers=True):  # the codes come from the files: no buffer allocated twice
            replace_module(model, name, PACKED_MODULES[layout["format"]].from_layout(layout, dtype))
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    for cls in {PACKED_MODULES[layout["format"]] for layout in layouts.values()}:
        if hasattr(cls, "after_load"):
            cls.after_load(model)
    still_empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if result.unexpected_keys or still_empty:
        raise ValueError(f"{str(folder)!r} does not match its tcompress.json: unexpected "
                         f"{result.unexpected_keys[:5]}, missing {still_empty[:5]}")
    return model
