"""AWQ: activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978).

Weights that meet large activations matter most. For each group of linears fed one tensor
`x`, AWQ scales their input channels by `s = mean|x|^a` (normalised so max·min = 1) and
divides `x` by `s` where it is produced (`scaling.py`: folded into the preceding norm or
linear, else kept as the layer's explicit input scale). Salient channels then get a finer
effective grid. The exponent `a` is searched on a grid in [0, 1): the one whose quantized
group gives the smallest error on the output of the module the group feeds (the attention,
the FFN, or the linears themselves). Then each weight group's range is clipped by the
shrink factor that minimises the error of that group's share of the layer output,
`(Q(w) - w)ᵀ X_gᵀ X_g (Q(w) - w)`, and the weights are rounded on those grids.
Scales are searched on the block's float inputs and applied before any weight is rounded,
as in the reference implementation; the search uses the first `search_samples` batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.engine.inputs import BlockInputs, BlockRunner
from tcompress.engine.method import BlockMethod, option, register
from tcompress.models.adapters import Adapter, Block
from tcompress.packed.grid import (
    Grid,
    as_stored,
    expand,
    fake_quantize,
    group_params,
    quantize_codes,
    scale_zero,
    value_range,
)
from tcompress.packed.quant_linear import QuantLinear
from tcompress.quantize.base import GridFields
from tcompress.quantize.scaling import InputGroup, fold, input_groups, scale_inputs


@dataclass
class Seen:
    """What one group of linears saw on the search batches (float model)."""

    inputs: list[Tensor] = field(default_factory=list)  # the group's input, one [tokens, in] per batch
    calls: list[tuple[tuple, dict[str, Any], Tensor]] = field(default_factory=list)  # inspected module's calls

    def x(self) -> Tensor:
        return torch.cat(self.inputs).float()

    def gram(self) -> Tensor:
        """XᵀX / tokens of the group's input: the squared output error of a weight change D
        is then tr(D XᵀX Dᵀ), without running the inputs again."""
        if self._gram is None:
            x = self.x()
            self._gram = x.t() @ x / len(x)
        return self._gram

    _gram: Tensor | None = None


@register
@dataclass(frozen=True)
class AWQ(GridFields, BlockMethod):
    """AWQ: activation-aware per-channel scales folded into the preceding module, then clipped
    round-to-nearest (weight-only)."""

    name = "awq"
    grid_points: int = option(20, "scale exponents tried: a = 0, 1/n, ..., (n-1)/n")
    duo_scaling: bool = option(False, "s = mean|x|^a / mean|w|^(1-a) (AutoAWQ's variant) instead of mean|x|^a")
    clip: bool = option(True, "search each weight group's clipping range on the layer output error")
    max_shrink: float = option(0.5, "the clip search shrinks ranges by up to this fraction, in steps of 1/20")
    search_samples: int = option(16, "calibration batches the searches use")
    # groups with nowhere to fold a scale are then left alone
    scales_only: bool = option(False, "fold the scales and clip the float weights, leaving the rounding to a "
                               "later stage (e.g. GPTQ)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid_points < 1:
            raise ValueError(f"grid_points must be at least 1, got {self.grid_points!r}")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink must be in [0, 1), got {self.max_shrink!r}")
        if self.search_samples < 1:
            raise ValueError(f"search_samples must be at least 1, got {self.search_samples!r}")

    def apply_block(self, adapter: Adapter, block: Block, inputs: BlockInputs, run: BlockRunner
                    ) -> dict[str, nn.Module]:
        groups = [g for g in input_groups(adapter, block)
                  if self._chosen(g) and (g.source is not None or not self.scales_only)]
        seen = record(groups, inputs, run, range(min(self.search_samples, len(inputs))))
        scales = {}
        for group in groups:
            s = self.search_scale(group, seen[group.part])
            scales[group.part] = s
            if group.source is not None:
                fold(group, s)
            else:
                scale_inputs(self._chosen(group), s)
        replacements = {}
        for group in groups:
            s = scales[group.part]
            x = seen[group.part].x() / s  # the input the scaled linears now get
            explicit = None if group.source is not None else s
            for name, linear in self._chosen(group).items():
                if self.scales_only:
                    self.clip_in_place(linear, x)
                else:
                    replacements[name] = self.quantize(linear, x, explicit)
        return replacements

    def _chosen(self, group: InputGroup) -> dict[str, nn.Module]:
        return {name: linear for name, linear in group.linears.items() if self.selects(name, linear)}

    # --- scale search ----------------------------------------------------------------------
    def search_scale(self, group: InputGroup, seen: Seen) -> Tensor:
        """The per-channel scale (as fp16 will store it) with the smallest output error."""
        x_mean = seen.x().abs().mean(dim=0)
        w_mean = self._weight_mean(group) if self.duo_scaling else None
        reference = [out for _, _, out in seen.calls] or None
        best, best_error = torch.ones_like(x_mean), float("inf")
        for i in range(self.grid_points):
            a = i / self.grid_points
            s = x_mean.pow(a) if w_mean is None else x_mean.pow(a) / w_mean.pow(1 - a)
            s = s.clamp(min=1e-4)
            s = (s / (s.max() * s.min()).sqrt()).half().float()
            error = self._output_error(group, seen, s, reference)
            if error < best_error:
                best, best_error = s, error
        return best

    def _weight_mean(self, group: InputGroup) -> Tensor:
        w = torch.cat([linear_weight(m).detach().float() for m in self._chosen(group).values()])
        size = self.group_size or w.shape[1]
        w = w.abs().view(-1, size)
        return (w / (w.amax(dim=1, keepdim=True) + 1e-6)).view(-1, group.in_features).mean(dim=0)

    def _output_error(self, group: InputGroup, seen: Seen, s: Tensor, reference: list[Tensor] | None) -> float:
        """Mean squared error of the group's output with its chosen linears' weights
        replaced by Q(W·s)/s (the inputs are left alone: the scales cancel)."""
        chosen = self._chosen(group)
        originals = {name: linear_weight(m).detach().clone() for name, m in chosen.items()}
        grid = Grid(self.bits, self.group_size, self.symmetric)
        try:
            for name, m in chosen.items():
                w = originals[name].float() * s
                scale, zero = group_params(w, grid)
                n = w.shape[1]
                q = fake_quantize(w, expand(scale, n), expand(zero, n), grid.maxq) / s
                linear_weight(m).copy_(q.to(originals[name].dtype))
            if reference is not None:
                total, count = 0.0, 0
                for (args, kwargs, expected) in seen.calls:
                    out = group.inspect(*args, **kwargs)
                    out = out[0] if isinstance(out, tuple) else out
                    total += (out.float() - expected.float()).pow(2).sum().item()
                    count += expected.numel()
                return total / count
            gram, total = seen.gram(), 0.0
            for name, m in chosen.items():
                d = linear_weight(m).float() - originals[name].float()
                total += ((d @ gram) * d).sum().item()
            return total / sum(linear_weight(m).shape[0] for m in chosen.values())
        finally:
            for name, m in chosen.items():
                linear_weight(m).copy_(originals[name])

    # --- clipping and rounding -----------------------------------------------------------
    def clip_in_place(self, linear: nn.Module, x: Tensor) -> None:
        """Clamp each weight group to the range its clip search chose (no rounding)."""
        if not self.clip:
            return
        w = self.weight_of(linear)
        scale, zero = clip_search(w, x, self.grid, self.max_shrink)
        n = w.shape[1]
        scale, zero = expand(scale, n), expand(zero, n)
        clipped = torch.minimum(torch.maximum(w, -zero * scale), (self.grid.maxq - zero) * scale)
        linear_weight(linear).copy_(clipped.to(linear.weight.dtype))

    def quantize(self, linear: nn.Module, x: Tensor, input_scale: Tensor | None) -> QuantLinear:
        w = self.weight_of(linear)
        if self.clip:
            scale, zero = clip_search(w, x, self.grid, self.max_shrink)
        else:
            scale, zero = group_params(w, self.grid)
        n = w.shape[1]
        codes = quantize_codes(w, expand(scale, n), expand(zero, n), self.grid.maxq).to(torch.uint8)
        return self.pack(linear, codes, scale, zero, input_scale)


def record(groups: list[InputGroup], inputs: BlockInputs, run: BlockRunner, batches: range) -> dict[str, Seen]:
    """Run the float block on `batches`, keeping each group's input and the calls (inputs
    and output) of the module each group's error is measured on."""
    seen = {group.part: Seen() for group in groups}
    handles = []
    for group in groups:
        first = next(iter(group.linears.values()))
        handles.append(first.register_forward_pre_hook(
            lambda m, args, part=group.part: seen[part].inputs.append(args[0].reshape(-1, args[0].shape[-1]))))
        if group.inspect is not None:
            handles.append(group.inspect.register_forward_hook(
                lambda m, args, kwargs, out, part=group.part: seen[part].calls.append(
                    (args, dict(kwargs), (out[0] if isinstance(out, tuple) else out).detach())),
                with_kwargs=True))
    try:
        for index in batches:
            run(inputs, index)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def clip_search(w: Tensor, x: Tensor, grid: Grid, max_shrink: float, steps: int = 20) -> tuple[Tensor, Tensor]:
    """Per-group scale and zero `[out, groups]` of `w` `[out, in]` whose clipped range gives
    the least error on the layer output for inputs `x` `[tokens, in]`.

    The error of one group is its share of the output error, dᵀ H_g d with d = Q(w_g) - w_g
    and H_g = X_gᵀ X_g the group's block of the input Gram matrix; shrink factors
    1, 1 - 1/steps, ... down to 1 - max_shrink are tried per group."""
    out_features, in_features = w.shape
    groups = grid.groups_of(in_features)
    size = in_features // groups
    xg = x.float().view(-1, groups, size)
    gram = torch.einsum("tgi,tgj->gij", xg, xg) / len(x)  # [groups, size, size]
    rows = w.float().reshape(out_features * groups, size)
    low, high = value_range(rows, grid)
    best_scale, best_zero = as_stored(*scale_zero(low, high, grid))
    best_error = torch.full((out_features, groups), float("inf"))
    for i in range(max(1, round(max_shrink * steps))):
        factor = 1 - i / steps
        scale, zero = as_stored(*scale_zero(low * factor, high * factor, grid))
        d = (fake_quantize(rows, scale[:, None], zero[:, None], grid.maxq) - rows).view(out_features, groups, size)
        error = torch.einsum("ogi,gij,ogj->og", d, gram, d)
        better = (error < best_error).view(-1)
        best_error = torch.minimum(error, best_error)
        best_scale, best_zero = torch.where(better, scale, best_scale), torch.where(better, zero, best_zero)
    return best_scale.view(out_features, groups), best_zero.view(out_features, groups)
