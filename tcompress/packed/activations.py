"""Activation quantizers, calibrated on data and simulated (fake-quantized) in the forward.

Three grids, for the three kinds of activations in a vision transformer:

- `uniform`: per-tensor asymmetric, `(clamp(round(x / s + z), 0, 2^b - 1) - z) * s`: for
  linear inputs and the attention matmuls' operands (queries, keys, values).
- `log2`: powers of sqrt(2), `x = 2^(-q/2)` (the largest code stands for 0): for post-softmax
  attention probabilities, most of which are tiny (RepQ-ViT, Li et al., 2023,
  arXiv:2212.08254). No parameters: probabilities are at most 1.
- `twin`: twin-uniform (PTQ4ViT, Yuan et al., 2022, arXiv:2111.12293) for post-GELU
  values: one sign bit, then `2^(b-1) - 1` steps of `s_neg` below zero (GELU's negative
  tail never passes -0.17) and of `s` above it, so neither range wastes the other's codes.

A quantizer first observes (its forward returns the input and keeps a sample of it), then
`fit` chooses its parameters: min-max, or a search over clipping ratios for the least error
of what the activation feeds (`weight`: the error of `x W^T`, the consumer linear's output).
Activations stay float in memory: these grids are simulated, to measure accuracy at 4, 6 and
8 bits; no integer kernel runs them (W8A8 with real int8 matmuls is `Int8Linear`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.packed.registry import register_format

KINDS = ("uniform", "log2", "twin")
ACT_BITS = (4, 6, 8)
MAX_ROWS = 8192  # rows of observations kept per quantizer


@register_format
class ActQuantizer(nn.Module):
    """A calibrated activation quantizer (see the module docstring for the kinds)."""

    format = "act_quantizer"

    def __init__(self, kind: str = "uniform", bits: int = 8, dtype: torch.dtype = torch.float32):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if isinstance(bits, bool) or bits not in ACT_BITS:
            raise ValueError(f"activations at {bits!r} bits: the simulated activation quantizers run {ACT_BITS} bits")
        self.kind, self.bits = kind, bits
        self.register_buffer("scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("zero", torch.zeros((), dtype=torch.float32))
        self.register_buffer("scale_neg", torch.ones((), dtype=torch.float32))
        self.observing = False
        self.samples: list[Tensor] = []

    def layout(self) -> dict:
        return {"kind": self.kind, "bits": self.bits}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> ActQuantizer:
        return cls(layout["kind"], layout["bits"])

    @classmethod
    def after_load(cls, model: nn.Module) -> None:
        use_quantized_attention(model)

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            rows = x.detach().reshape(-1, x.shape[-1]).float()
            self.samples.append(rows[torch.randperm(len(rows), generator=_generator(len(self.samples)))[:MAX_ROWS]])
            return x
        return fake_quantize(x.float(), self.kind, self.bits, self.scale, self.zero, self.scale_neg).to(x.dtype)

    @torch.no_grad()
    def fit(self, search: bool = True, weight: Tensor | None = None, kinds: tuple[str, ...] = ()) -> None:
        """Choose the parameters from the observed samples (then forget them); with `kinds`,
        also the kind, whichever gives the least error."""
        if not self.samples:
            raise RuntimeError("this quantizer observed nothing: run calibration data through the model first")
        x = torch.cat(self.samples)[:MAX_ROWS]
        self.samples, self.observing = [], False
        fits = [self._fit_kind(kind, x, search, weight) for kind in (kinds or (self.kind,))]
        error, self.kind, scale, zero, scale_neg = min(fits, key=lambda fit: fit[0])
        self.scale.fill_(scale)
        self.zero.fill_(zero)
        self.scale_neg.fill_(scale_neg)

    def _fit_kind(self, kind: str, x: Tensor, search: bool, weight: Tensor | None) -> tuple[float, str, float, float, float]:
        """(error, kind, scale, zero, scale_neg): the best grid of this kind for `x`."""
        low, high = x.min().clamp(max=0), x.max().clamp(min=0)
        scale_neg = 1.0
        if kind == "twin":
            scale_neg = max(-low.item(), 1e-8) / (2 ** (self.bits - 1) - 1)
            low = torch.zeros(())
        ratios = torch.linspace(0.3, 1.0, 36) if search and kind != "log2" else torch.ones(1)
        best = None
        for ratio in ratios:
            scale, zero = self._grid(kind, low * ratio, high * ratio)
            error = _error(fake_quantize(x, kind, self.bits, torch.tensor(scale), torch.tensor(zero),
                                         torch.tensor(scale_neg)) - x, weight)
            if best is None or error < best[0]:
                best = (error, kind, scale, zero, scale_neg)
        return best

    def _grid(self, kind: str, low: Tensor, high: Tensor) -> tuple[float, float]:
        if kind == "twin":
            return max(high.item(), 1e-8) / (2 ** (self.bits - 1) - 1), 0.0
        scale = max((high - low).item(), 1e-8) / (2**self.bits - 1)
        return scale, float(torch.round(-low / scale))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bits={self.bits}"


def fake_quantize(x: Tensor, kind: str, bits: int, scale: Tensor, zero: Tensor, scale_neg: Tensor) -> Tensor:
    """`x` as the quantizer's grid represents it."""
    if kind == "uniform":
        return (torch.clamp(torch.round(x / scale + zero), 0, 2**bits - 1) - zero) * scale
    if kind == "log2":
        top = 2**bits - 1
        codes = torch.clamp(torch.round(-2 * torch.log2(x.clamp(min=1e-30))), 0, top)
        return torch.where((codes < top) & (x > 0), torch.exp2(-codes / 2), torch.zeros_like(x))
    steps = 2 ** (bits - 1) - 1
    positive = torch.clamp(torch.round(x / scale), 0, steps) * scale
    negative = torch.clamp(torch.round(-x / scale_neg), 0, steps) * scale_neg
    return torch.where(x >= 0, positive, -negative)


def _error(difference: Tensor, weight: Tensor | None) -> float:
    out = difference if weight is None else difference @ weight.t()
    return out.pow(2).sum().item()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quantized_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                        scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor]:
    """Eager attention with the module's quantizers on queries, keys, values and the
    softmax probabilities (the attention matmuls then multiply quantized operands)."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    query, key, value = module.query_quantizer(query), module.key_quantizer(key), module.value_quantizer(value)
    scores = query @ key.transpose(-1, -2) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = module.probs_quantizer(torch.softmax(scores.float(), dim=-1).to(query.dtype))
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return (probs @ value).transpose(1, 2).contiguous(), probs


ATTENTION = "tcompress_quantized"


def use_quantized_attention(model: nn.Module) -> None:
    """Route attention through `quantized_attention` where the model's attention modules
    carry quantizers."""
    if any(hasattr(module, "probs_quantizer") for module in model.modules()):
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, quantized_attention)
        model.set_attn_implementation(ATTENTION)
