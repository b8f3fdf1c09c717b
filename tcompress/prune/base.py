"""What every unstructured / N:M pruner shares: its sparsity fields, validation, the mask
from scores, and storing the result as a `SparseLinear`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.engine.method import LinearMethod, option
from tcompress.packed.sparse import SparseLinear
from tcompress.prune.masks import check_sparsity, keep_mask, nm_keep_mask, parse_pattern

DEFAULT_SPARSITY = 0.5


@dataclass(frozen=True)
class Pruner(LinearMethod):
    """Fields of a weight pruner; subclasses score weights and implement `apply`.

    `sparsity` is the share of each linear's weights set to zero (default 0.5), `per_layer`
    overrides it for the linears whose names match an fnmatch pattern (the first match
    wins), and `pattern` ("2:4", "4:8") asks for N kept weights in every M consecutive
    inputs of a row instead (its sparsity is 1 - N/M)."""

    kind: ClassVar[str] = "prune"
    sparsity: float | None = option(None, "share of each linear's weights set to zero, in [0, 1) (none: 0.5, or "
                                     "the pattern's)")
    pattern: str | None = option(None, "N kept weights in every M consecutive inputs, e.g. 2:4 (instead of a sparsity)")
    per_layer: dict[str, float] = option(default_factory=dict, help="sparsities by fnmatch pattern of linear "
                                         "names, e.g. *mlp*=0.6+*attn*=0.4 (the first match wins)")

    def __post_init__(self) -> None:
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        for pattern, value in self.per_layer.items():
            check_sparsity(value, f"per_layer[{pattern!r}]")
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(f"sparsity={self.sparsity} contradicts pattern {self.pattern!r} "
                                 f"(which prunes {1 - n / m:g}): give one of them")
            if self.per_layer:
                raise ValueError("per_layer sparsities do not apply with an N:M pattern")

    def headline(self) -> list[str]:
        return [self.pattern or f"{self.sparsity_of(''):.0%}"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("sparsity", "pattern")

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern is None else parse_pattern(self.pattern)

    def sparsity_of(self, name: str) -> float:
        """The sparsity asked of the linear `name`."""
        if self.nm is not None:
            n, m = self.nm
            return 1 - n / m
        for pattern, value in self.per_layer.items():
            if fnmatch.fnmatch(name, pattern):
                return value
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    def check(self, name: str, linear: nn.Module) -> None:
        in_features = linear_weight(linear).shape[1]
        if self.nm is not None and in_features % self.nm[1]:
            raise ValueError(f"{self.name}: {name}: pattern {self.pattern!r} needs the input dimension to be a "
                             f"multiple of {self.nm[1]}, got {in_features}")

    def mask(self, scores: Tensor, name: str, per_row: bool) -> Tensor:
        """Keep-mask of one linear from its weights' scores `[out, in]`."""
        if self.nm is not None:
            return nm_keep_mask(scores, *self.nm)
        return keep_mask(scores, self.sparsity_of(name), per_row)

    @staticmethod
    def weight_of(linear: nn.Module) -> Tensor:
        return linear_weight(linear).detach()  # [out, in]

    @staticmethod
    def pack(linear: nn.Module, weight: Tensor) -> SparseLinear:
        """The pruned linear, stored sparse; `weight` `[out, in]` is zero where pruned."""
        bias = linear.bias.detach() if linear.bias is not None else None
        return SparseLinear.from_dense(weight.to(linear.weight.dtype), bias).to(linear.weight.device)
