"""Export for any runtime: a plain Hugging Face float folder, the packed modules of a
compressed model dequantized back into ordinary linears (`tcompress.json` is not needed
to load it; plain `from_pretrained` does)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcompress.core.modules import replace_module
from tcompress.models.loading import drop_gguf_marker
from tcompress.packed.embedding import QuantEmbedding, ScaledEmbedding
from tcompress.packed.registry import packed_modules


def dequantized(model: nn.Module) -> nn.Module:
    """A copy of `model` with every packed module replaced by the float linear it computes."""
    plain = copy.deepcopy(model)
    for name, module in packed_modules(plain).items():
        if isinstance(module, QuantEmbedding):
            table = module.dequantize(torch.float32)
            replace_module(plain, name, ScaledEmbedding(table, module.scale, module.padding_idx) if module.scale != 1
                           else nn.Embedding.from_pretrained(table, freeze=True, padding_idx=module.padding_idx))
            continue
        if not hasattr(module, "in_features"):
            raise ValueError(f"{name}: a {type(module).__name__} has no float equivalent (activation quantizers "
                             f"are simulated); export the model before quantizing activations")
        weight = module.dequantize(torch.float32)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
        linear.weight.data = weight
        if module.bias is not None:
            linear.bias.data = module.bias.detach().float().clone()
        replace_module(plain, name, linear)
    plain.tc_record = None
    return plain


def export_hf(model: nn.Module, processor: Any, folder: str | os.PathLike) -> Path:
    """Write `model` as a plain float folder (dequantized), loadable with `from_pretrained`."""
    plain = dequantized(model)
    drop_gguf_marker(plain)
    folder = Path(folder)
    plain.save_pretrained(folder, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
