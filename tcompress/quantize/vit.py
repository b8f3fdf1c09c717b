"""Post-training quantization of vision transformers, weights and activations (W8A8 to W4A4).

Uniform min-max quantizers fail on three kinds of ViT activations, and each gets the
quantizer the ViT literature made for it (`quantizers="vit"`):

- post-LayerNorm activations vary wildly between channels: RepQ-ViT's scale
  reparameterization (Li et al., 2023, arXiv:2212.08254) calibrates them per channel, then
  folds the per-channel scales and zero points into the LayerNorm's affine and the next
  linear's weights and bias, so one per-tensor grid serves every channel;
- post-softmax probabilities: a log2 grid in steps of sqrt(2) (RepQ-ViT);
- post-GELU values: a twin-uniform grid (PTQ4ViT, Yuan et al., 2022, arXiv:2111.12293);

and every grid's clipping is searched for the least error of what it feeds (a linear's
output, for linear inputs). Weights are quantized per output channel (MSE clipping search).
`quantizers="minmax"` is the baseline: min-max uniform grids everywhere, weights included.
Both quantize the inputs of every block linear and the attention matmuls' operands; the
patch embedding and the classifier stay float. Weights are stored packed (`QuantLinear`),
activations are simulated (`activations.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.data.vision import check_images
from tcompress.engine.apply import change_each_linear
from tcompress.engine.method import ModelMethod, option, register
from tcompress.models.adapters import Adapter, adapter
from tcompress.packed.activations import ACT_BITS, ActQuantizer, use_quantized_attention
from tcompress.packed.grid import Grid
from tcompress.packed.quant_linear import QuantLinear
from tcompress.quantize.rtn import RTN

QUANTIZERS = ("vit", "minmax")


@register
@dataclass(frozen=True)
class ViTQuant(ModelMethod):
    """Weights and activations of ViT/DeiT classifiers quantized, W8A8 to W4A4 (calibration: images)."""

    name = "vit-ptq"
    kind = "quantize"
    bits: int = option(4, "bits a weight, per output channel")
    act_bits: int = option(4, f"bits an activation (simulated): {', '.join(map(str, ACT_BITS))}")
    quantizers: str = option("vit", "vit: the ViT-specific quantizers; minmax: the uniform min-max baseline",
                             choices=QUANTIZERS)

    def __post_init__(self) -> None:
        Grid(self.bits, None)
        if isinstance(self.act_bits, bool) or self.act_bits not in ACT_BITS:
            raise ValueError(f"act_bits={self.act_bits!r}: the simulated activation quantizers run {ACT_BITS} bits")
        if self.quantizers not in QUANTIZERS:
            raise ValueError(f"quantizers must be one of {QUANTIZERS}, got {self.quantizers!r}")

    def headline(self) -> list[str]:
        return [f"W{self.bits}A{self.act_bits}"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("bits", "act_bits")

    def check(self, model: nn.Module) -> None:
        parts = adapter(model)
        if parts.family is None or parts.family.name != "vit" or parts.family.mlp is None:
            raise ValueError(f"vit-ptq quantizes ViT/DeiT classifiers (transformers >= 5 layout), got a {parts.name} model")
        if any(isinstance(m, QuantLinear) for m in model.modules()):
            raise ValueError("vit-ptq needs a float model; this one is already quantized")

    def apply_model(self, model: nn.Module, calib: Any, progress: bool = True) -> None:
        batches = image_batches(calib)
        for batch in batches:
            check_images(model, batch)
        parts = adapter(model)
        search = self.quantizers == "vit"
        if search:
            for block in tqdm(parts.blocks(), desc="reparameterize LayerNorms", disable=not progress):
                for norm, linears in ((block.attn_norm, block.attn_in), (block.ffn_norm, block.ffn_in)):
                    reparameterize(norm, list(linears.values()), observe_output(model, norm, batches), self.act_bits)
        change_each_linear(model, RTN(bits=self.bits, group_size=None, search="mse" if search else "minmax"))
        quantizers = attach_quantizers(model, adapter(model), self.act_bits, search)
        for quantizer, _, _ in quantizers:
            quantizer.observing = True
        run(model, batches)
        for quantizer, consumer, kinds in tqdm(quantizers, desc="fit activation grids", disable=not progress):
            quantizer.fit(search=search, weight=consumer, kinds=kinds)


def image_batches(calib: Any, batch_size: int = 32) -> list[Tensor]:
    """Pixel batches from images `[n, c, h, w]`, an `ImageSet`, or a list of either."""
    pixels = getattr(calib, "pixel_values", calib)
    if isinstance(pixels, Tensor) and pixels.ndim == 4:
        return list(pixels.split(batch_size))
    if isinstance(pixels, (list, tuple)) and pixels and all(isinstance(p, Tensor) and p.ndim == 4 for p in pixels):
        return list(pixels)
    raise ValueError("vit-ptq calibration must be images [n, channels, height, width] (e.g. tc.data.images(...))")


@torch.no_grad()
def run(model: nn.Module, batches: list[Tensor]) -> None:
    device = next(model.parameters()).device
    for pixels in batches:
        model(pixel_values=pixels.to(device))


@torch.no_grad()
def observe_output(model: nn.Module, module: nn.Module, batches: list[Tensor]) -> Tensor:
    """Per-channel minimum and maximum of `module`'s output over the batches: `[2, channels]`."""
    low, high = [], []

    def keep(module: nn.Module, inputs: Any, out: Tensor) -> None:
        low.append(out.flatten(0, -2).amin(0))
        high.append(out.flatten(0, -2).amax(0))

    handle = module.register_forward_hook(keep)
    try:
        run(model, batches)
    finally:
        handle.remove()
    return torch.stack([torch.stack(low).amin(0), torch.stack(high).amax(0)])


@torch.no_grad()
def reparameterize(norm: nn.LayerNorm, linears: list[nn.Module], ranges: Tensor, bits: int) -> None:
    """RepQ-ViT: per-channel grids of the norm's output `(s_c, z_c)` become one per-tensor
    grid `(mean s, mean z)`: the output is rescaled by `r1 = s_c / mean s` and shifted by
    `mean s * (z_c - mean z)` inside the norm's affine, and the linears reading it undo that
    in their weights (columns times r1) and bias."""
    low, high = ranges[0].clamp(max=0), ranges[1].clamp(min=0)
    scale = ((high - low) / (2**bits - 1)).clamp(min=1e-8)  # [channels]
    zero = torch.round(-low / scale)
    r1 = scale / scale.mean()
    shift = scale.mean() * (zero - zero.mean())  # added to the rescaled output
    norm.weight.div_(r1)
    norm.bias.div_(r1).add_(shift)
    for linear in linears:  # W x + b = (W r1) x' + (b - (W r1) shift)
        linear.weight.mul_(r1)
        linear.bias.sub_(linear.weight @ shift)


def attach_quantizers(model: nn.Module, parts: Adapter, bits: int, specific: bool
                      ) -> list[tuple[ActQuantizer, Tensor | None, tuple[str, ...]]]:
    """An input quantizer on every block linear, and quantizers on the attention matmuls'
    operands; each with the weight of what it feeds (for the error it is fitted on) and the
    kinds it may take (the ViT-specific ones, or uniform where that fits better: a log2 grid
    keeps its relative error at any width, so at 8 bits uniform beats it)."""
    attached = []
    family = parts.family
    for block in parts.blocks():
        for path in (*family.attn_in, *family.attn_out, *family.ffn_in, *family.ffn_out):
            linear = block.module.get_submodule(path)  # packed by now, so not among block.linears
            kinds = ("twin", "uniform") if specific and path in family.ffn_out else ("uniform",)
            linear.input_quantizer = ActQuantizer(kinds[0], bits)
            attached.append((linear.input_quantizer, linear.dequantize(torch.float32), kinds))
        attention = block.module.get_submodule(family.attention)
        for role in ("query", "key", "value"):
            setattr(attention, f"{role}_quantizer", ActQuantizer("uniform", bits))
            attached.append((getattr(attention, f"{role}_quantizer"), None, ("uniform",)))
        kinds = ("log2", "uniform") if specific else ("uniform",)
        attention.probs_quantizer = ActQuantizer(kinds[0], bits)
        attached.append((attention.probs_quantizer, None, kinds))
    use_quantized_attention(model)
    return attached
