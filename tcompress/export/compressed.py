"""Export to compressed-tensors, the format llm-compressor writes and vLLM and transformers
(with the `compressed-tensors` package) load as a quantized model.

A `QuantLinear` becomes a `pack-quantized` layer: its codes, shifted to the signed range
`[-2^(b-1), 2^(b-1))`, packed into int32 (compressed-tensors' own packing), its group scales
and, for asymmetric grids, its zero points (packed the same way). The values are the same:
`(code - zero) * scale`. An `Int8Linear` (SmoothQuant W8A8) becomes an `int-quantized` layer
with int8 channel-wise weights and dynamic per-token int8 activations.

Where our layer holds what the format cannot (fractional zero points from HQQ, an input scale
that was not folded, outlier columns), its weight is dequantized and requantized on the same
grid (round to nearest), and the export counts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tcompress.export.formats import holds
from tcompress.export.plain import dequantized
from tcompress.models.loading import drop_gguf_marker
from tcompress.packed.grid import Grid, quantize_weight
from tcompress.packed.int8 import Int8Linear, quantize_rows
from tcompress.packed.quant_linear import QuantLinear


@dataclass
class CompressedTensorsExport:
    folder: Path
    from_codes: int  # linears written from their own codes and scales, losslessly
    requantized: int  # linears whose weight had to be requantized for the format


def export_compressed_tensors(model: nn.Module, processor: Any, folder: str | os.PathLike) -> CompressedTensorsExport:
    """Write `model`'s quantized linears (QuantLinear or Int8Linear) as a compressed-tensors
    folder that `from_pretrained` loads quantized; everything else stays as it is."""
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError as error:
        raise ImportError("the compressed-tensors export needs the compressed-tensors package: "
                          "pip install compressed-tensors") from error
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, (QuantLinear, Int8Linear))}
    if not quantized:
        raise ValueError("the model has no quantized linears (QuantLinear or Int8Linear) to export; "
                         "use --format hf for a float model")
    if len({type(m) for m in quantized.values()}) > 1:
        raise ValueError("the model mixes weight-only (QuantLinear) and W8A8 (Int8Linear) layers; "
                         "compressed-tensors export takes one kind per model")
    plain = dequantized(model)
    drop_gguf_marker(plain)
    state = plain.state_dict()
    groups: dict[str, dict] = {}
    requantized = 0
    for name, module in quantized.items():
        if isinstance(module, QuantLinear):
            tensors, scheme, exact = packed_layer(module, pack_to_int32)
        else:
            tensors, scheme, exact = int8_layer(module)
        requantized += not exact
        del state[f"{name}.weight"]
        state.update({f"{name}.{key}": value for key, value in tensors.items()})
        key = repr(sorted(scheme.items(), key=str))
        groups.setdefault(key, {**scheme, "targets": []})["targets"].append(name)
    int8 = isinstance(next(iter(quantized.values())), Int8Linear)
    plain.config.quantization_config = quantization_config(list(groups.values()), int8)
    folder = Path(folder)
    plain.save_pretrained(folder, state_dict=state, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(folder)
    return CompressedTensorsExport(folder, len(quantized) - requantized, requantized)


def packed_layer(module: QuantLinear, pack_to_int32) -> tuple[dict[str, Tensor], dict, bool]:
    """The pack-quantized tensors of `module`, its weight scheme, and whether they hold its
    own codes (True) or a requantization (False)."""
    grid = module.grid
    codes, scales, zeros = module.codes().long(), module.scales.float(), module.zeros.float()
    exact = holds(module, "compressed-tensors")
    if not exact:  # round to nearest on the same grid, min-max ranges (integer zeros)
        codes, scales, zeros = quantize_weight(module.dequantize(torch.float32),
                                               Grid(grid.bits, grid.group_size, grid.symmetric))
        codes = codes.long()
    offset = 2 ** (grid.bits - 1)
    signed = (codes - offset).to(torch.int8)
    dtype = module.compute_dtype
    tensors = {"weight_packed": pack_to_int32(signed, grid.bits),
               "weight_scale": scales.to(dtype),
               "weight_shape": torch.tensor([module.out_features, module.in_features])}
    if not grid.symmetric:
        tensors["weight_zero_point"] = pack_to_int32((zeros - offset).to(torch.int8), grid.bits, packed_dim=0)
    weights = {"num_bits": grid.bits, "type": "int", "symmetric": grid.symmetric, "dynamic": False,
               "strategy": "group" if grid.group_size else "channel", "group_size": grid.group_size,
               "observer": "minmax"}
    return tensors, {"weights": weights, "input_activations": None, "format": "pack-quantized"}, exact


def int8_layer(module: Int8Linear) -> tuple[dict[str, Tensor], dict, bool]:
    """The int-quantized tensors of an Int8Linear (int8 weight, channel scales) and its scheme:
    W8A8 with dynamic per-token activations, or weight-only W8."""
    exact = holds(module, "compressed-tensors")
    codes, scales = (module.qweight, module.scales[:, None]) if exact else quantize_rows(module.dequantize(torch.float32))
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False, "strategy": "channel",
               "observer": "minmax"}
    activations = ({"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True, "strategy": "token"}
                   if module.activations else None)  # weight-only W8 keeps float activations
    scheme = {"weights": weights, "input_activations": activations, "format": "int-quantized"}
    return {"weight": codes.clone(), "weight_scale": scales.to(module.compute_dtype)}, scheme, exact


def quantization_config(groups: list[dict], int8: bool) -> dict:
    """The `quantization_config` entry of config.json: one config group per distinct scheme,
    each targeting its layers by name."""
    return {"quant_method": "compressed-tensors", "format": "int-quantized" if int8 else "pack-quantized",
            "quantization_status": "compressed", "ignore": [],
            "config_groups": {f"group_{i}": group for i, group in enumerate(groups)}}


def load_compressed_tensors(folder: str | os.PathLike) -> tuple[nn.Module, bool]:
    """Load an export back with plain transformers; returns the model and whether it loaded
    quantized (packed weights in memory) rather than dequantized.

    transformers (5.x with compressed-tensors 0.20) builds asymmetric pack-quantized layers with
    unpacked zero-point shapes and then refuses the packed zero points the format stores, so
    such a folder is loaded with `dequantize=True` (vLLM reads it as written)."""
    import json

    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    config = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    asymmetric = any(not group["weights"]["symmetric"] for group in config["config_groups"].values())
    options = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if asymmetric else {}
    return AutoModelForCausalLM.from_pretrained(folder, **options).eval(), not asymmetric
