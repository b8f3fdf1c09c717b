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

from tcompress.export.packed import PACKED_MODULES
from tcompress.methods import replace_module
from tcompress.quantize.embedding import QuantEmbedding


def dequantized(model: nn.Module) -> nn.Module:
    """A copy of `model` with every packed module replaced by the float linear it computes."""
    plain = copy.deepcopy(model)
    packed = tuple(PACKED_MODULES.values())
    for name, module in [(n, m) for n, m in plain.named_modules() if isinstance(m, packed)]:
        if isinstance(module, QuantEmbedding):
            replace_module(plain, name, nn.Embedding.from_pretrained(module.dequantize(torch.float32), freeze=True,
                                                                     padding_idx=module.padding_idx))
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
    from tcompress.export.checkpoint import drop_gguf_marker

    plain = dequantized(model)
    drop_gguf_marker(plain)
    folder = Path(folder)
    plain.save_pretrained(folder, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
