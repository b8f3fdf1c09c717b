"""SmoothQuant: W8A8 after moving activation outliers into the weights (Xiao et al., 2022,
arXiv:2211.10438).

A few input channels carry activations far larger than the rest, so per-token int8 loses
the small ones. Dividing channel j of a group's input by `s_j = max|X_j|^a / max|W_j|^(1-a)`
and multiplying the weight columns by it (exact in float) evens out the two ranges; then the
weights are int8 per output channel and the activations int8 per token, multiplied on an
integer kernel (`int8.py`). `1/s` is folded into the norm or linear that produces the input
(`scaling.py`); where nothing can take it, the linears keep it as an explicit input scale.
The scales come from the block's inputs before any of its weights is rounded, as in the
paper; each block sees the outputs of the blocks already quantized before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.engine.inputs import BlockInputs, BlockRunner
from tcompress.engine.method import BlockMethod, option, register
from tcompress.engine.sequential import observe
from tcompress.models.adapters import Adapter, Block
from tcompress.packed.int8 import Int8Linear
from tcompress.quantize.scaling import fold, input_groups, scale_inputs

EPS = 1e-5  # smoothing factors stay within [EPS, 1/EPS]


@register
@dataclass(frozen=True)
class SmoothQuant(BlockMethod):
    """SmoothQuant W8A8: activation outliers moved into the weights, then int8 weights per
    channel and int8 activations per token."""

    name = "smoothquant"
    kind = "quantize"
    input_only_stats = False  # its statistic (max |x| per channel) is read once per input group
    alpha: float = option(0.5, "share of the activations' range moved into the weights, in [0, 1]")
    activations: bool = option(True, "int8 activations per token (W8A8); off: int8 weights only (W8)",
                               aliases=("--weight-only",))

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"smoothquant: alpha must be a number in [0, 1], got {self.alpha!r}")
        if type(self.activations) is not bool:
            raise ValueError(f"smoothquant: activations must be True (W8A8) or False (weight-only W8), "
                             f"got {self.activations!r}")

    def headline(self) -> list[str]:
        return ["W8A8" if self.activations else "W8", f"alpha={self.alpha}"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("activations", "alpha")

    def init_stats(self, linear: nn.Module) -> Tensor:
        return torch.zeros(linear_weight(linear).shape[1], device=linear.weight.device)  # max |x| per input channel

    def observe(self, stats: Tensor, x: Tensor) -> Tensor:  # x: [tokens, in]
        return torch.maximum(stats, x.detach().abs().amax(dim=0).float())

    def apply_block(self, adapter: Adapter, block: Block, inputs: BlockInputs, run: BlockRunner
                    ) -> dict[str, nn.Module]:
        chosen, input_scales = self.smooth(adapter, block, inputs, run)
        return {name: Int8Linear.from_linear(linear, self.activations, input_scales.get(name))
                for name, linear in chosen.items()}

    @torch.no_grad()
    def smooth(self, adapter: Adapter, block: Block, inputs: BlockInputs, run: BlockRunner
               ) -> tuple[dict[str, nn.Module], dict[str, Tensor]]:
        """Move each group's activation range into its weights (exact in float). Returns the
        selected linears, and the input scales of those that must divide their input themselves."""
        groups = [(group, chosen) for group in input_groups(adapter, block)
                  if (chosen := {n: m for n, m in group.linears.items() if self.selects(n, m)})]
        firsts = dict(next(iter(group.linears.items())) for group, _ in groups)  # one linear reads each input
        absmax = observe(self, firsts, inputs, run)
        selected, input_scales = {}, {}
        for group, chosen in groups:
            s = smoothing_scales(absmax[next(iter(group.linears))], weight_absmax(group.linears), self.alpha)
            if group.source is not None:
                fold(group, s)
            else:
                scale_inputs(chosen, s)
                input_scales.update(dict.fromkeys(chosen, s))
            selected.update(chosen)
        return selected, input_scales


def weight_absmax(linears: dict[str, nn.Module]) -> Tensor:
    """max |W_j| per input channel over all the linears `[in]`."""
    return torch.stack([linear_weight(m).detach().abs().amax(dim=0).float() for m in linears.values()]).amax(dim=0)


def smoothing_scales(act_absmax: Tensor, weight_absmax: Tensor, alpha: float) -> Tensor:
    """`s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` `[in]`, clamped to [EPS, 1/EPS]; 1 for a
    channel that saw no input or has no weight (nothing to balance, so nothing is moved)."""
    act, weight = act_absmax.float(), weight_absmax.float()
    s = act.clamp(min=EPS).pow(alpha) / weight.clamp(min=EPS).pow(1 - alpha)
    return torch.where((act > 0) & (weight > 0), s.clamp(EPS, 1 / EPS), torch.ones_like(s))
