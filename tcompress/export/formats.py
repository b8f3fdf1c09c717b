"""What each export target holds as it is: the grid a quantizer must use so that its codes are
written losslessly (`tcompress quantize --for TARGET`), and the quantized linears a target
would have to requantize.

- GGUF Q4_0 and Q8_0 store blocks of 32 weights with one fp16 scale and no zero point:
  4- and 8-bit symmetric grids in groups of 32.
- compressed-tensors stores codes, group scales and zero points; transformers (and so
  lm-eval's `hf` model) loads symmetric ones quantized, asymmetric ones only dequantized. It
  holds integer zero points only, and nothing beside the codes (no input scale, no outlier
  columns).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tcompress.packed.int8 import Int8Linear
from tcompress.packed.quant_linear import QuantLinear

GRIDS: dict[str, dict[str, Any]] = {
    "gguf-q4_0": {"bits": 4, "group_size": 32, "symmetric": True},
    "gguf-q8_0": {"bits": 8, "group_size": 32, "symmetric": True},
    "compressed-tensors": {"symmetric": True},
}
TARGETS = tuple(GRIDS)


def grid_text(target: str) -> str:
    """`4 bits, groups of 32, symmetric` for a target's grid."""
    grid = GRIDS[target]
    words = [f"{grid['bits']} bits" if "bits" in grid else None,
             f"groups of {grid['group_size']}" if "group_size" in grid else None, "symmetric"]
    return ", ".join(word for word in words if word)


def holds(module: nn.Module, target: str) -> bool:
    """Whether `target` stores this packed linear's codes as they are."""
    if isinstance(module, Int8Linear):
        return target == "compressed-tensors" and module.input_scale is None
    if not isinstance(module, QuantLinear) or module.input_scale is not None or module.outliers:
        return False
    grid = module.grid
    if target == "compressed-tensors":
        return grid.symmetric or bool((module.zeros.float() == module.zeros.float().round()).all())
    wanted = GRIDS[target]
    return grid.bits == wanted["bits"] and grid.group_size == wanted["group_size"] and grid.symmetric


def requantized(model: nn.Module, target: str) -> list[str]:
    """The quantized linears of `model` that `target` would have to requantize."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (QuantLinear, Int8Linear)) and not holds(module, target)]


def advice(model: nn.Module, target: str) -> str | None:
    """What to say before an export that requantizes, or None where it writes every code as it is."""
    names = requantized(model, target)
    if not names:
        return None
    total = sum(isinstance(m, (QuantLinear, Int8Linear)) for m in model.modules())
    fix = (f"quantize with --for {target} ({grid_text(target)}) to write them as they are"
           if target in GRIDS else "they cannot be held as they are")
    return (f"{len(names)} of the {total} quantized linears (e.g. {names[0]}) are not on {target}'s grid or hold "
            f"what it cannot store, and will be requantized; {fix}")
