"""`SparseLinear`: a pruned linear stored as a bitmask of the kept weights plus their values.

Bytes of a sparse linear `[out, in]` with `k` kept weights: `out * ceil(in / 8)` (the mask,
one bit a weight) `+ k * e` (the values, `e` bytes each in the model's dtype) `+ bias`. At
50% sparsity in float32 that is 17 bits a weight instead of 32; at 2:4 the mask costs the
same bit a weight as 2:4 metadata would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.quantize.formats import pack, unpack


class SparseLinear(nn.Module):
    """A linear layer whose weight is stored sparse: `mask` uint8 `[out, ceil(in / 8)]` (bit
    j of row r set where weight [r, j] is kept, the first in the lowest bit) and `values`
    `[kept]`, the kept weights row by row. The forward rebuilds the dense weight."""

    format = "sparse_linear"

    def __init__(self, in_features: int, out_features: int, kept: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("mask", torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8))
        self.register_buffer("values", torch.zeros(kept, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None) -> SparseLinear:
        """Store `weight` `[out, in]`; its zeros are the pruned weights."""
        kept = weight != 0
        module = cls(weight.shape[1], weight.shape[0], int(kept.sum()), bias=bias is not None, dtype=weight.dtype)
        module.mask.copy_(pack(kept.to(torch.uint8), 1))
        module.values.copy_(weight[kept])
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    def kept(self) -> Tensor:
        """Bool `[out, in]`: True where a weight is kept."""
        return unpack(self.mask, 1, self.in_features).bool()

    def dense_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        weight = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        weight.masked_scatter_(self.kept(), self.values)
        return weight.to(dtype or self.values.dtype)

    dequantize = dense_weight  # the weight this layer computes with, as the engine asks every packed module

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dense_weight(x.dtype), bias)

    def layout(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "kept": len(self.values),
                "bias": self.bias is not None}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> SparseLinear:
        return cls(layout["in_features"], layout["out_features"], layout["kept"], bias=layout["bias"], dtype=dtype)

    @property
    def sparsity(self) -> float:
        return 1 - len(self.values) / (self.in_features * self.out_features)

    def nbytes(self) -> int:
        tensors = [t for t in (self.mask, self.values, self.bias) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sparsity={self.sparsity:.3f}"
