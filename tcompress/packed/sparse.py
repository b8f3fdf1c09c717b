"""`SparseLinear`: a pruned linear, dense in memory and stored sparse.

In memory it is an ordinary `nn.Linear` whose pruned weights are zero, so it runs exactly
as fast as the dense layer and every later stage sees a linear. Its state dict (what
`tc.save` writes and `tc.load` reads) holds a bitmask of the kept weights and their values
instead of the dense weight: `mask` uint8 `[out, ceil(in / 8)]` (bit j of row r set where
weight [r, j] is kept, the first in the lowest bit) and `values` `[kept]`, row by row.

Bytes stored for `[out, in]` with `k` kept weights: `out * ceil(in / 8)` (the mask, one bit
a weight) `+ k * e` (the values, `e` bytes each in the model's dtype) `+ bias`. At 50%
sparsity in float32 that is 17 bits a weight instead of 32; at 2:4 the mask costs the same
bit a weight as 2:4 metadata would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tcompress.packed.bits import pack, unpack
from tcompress.packed.registry import register_format


@register_format
class SparseLinear(nn.Linear):
    """A linear layer with pruned (zero) weights, saved as a bitmask plus the kept values."""

    format = "sparse_linear"

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None) -> SparseLinear:
        """The layer of `weight` `[out, in]`, whose zeros are the pruned weights."""
        module = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                     device=weight.device)
        module.weight.requires_grad_(False).copy_(weight)
        if bias is not None:
            module.bias.requires_grad_(False).copy_(bias)
        return module

    def kept(self) -> Tensor:
        """Bool `[out, in]`: True where a weight is kept."""
        return self.weight != 0

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight this layer computes with (what the engine asks of every packed module)."""
        return self.weight.detach().to(dtype or self.weight.dtype)

    @property
    def sparsity(self) -> float:
        return 1 - self.kept().sum().item() / self.weight.numel()

    def stored_bytes(self) -> int:
        """Bytes of the saved form: mask, kept values and bias."""
        kept = int(self.kept().sum())
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.out_features * -(-self.in_features // 8) + kept * self.weight.element_size() + bias

    def layout(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> SparseLinear:
        return cls(layout["in_features"], layout["out_features"], bias=layout["bias"], dtype=dtype, device="meta")

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self.weight.detach()
        kept = weight != 0
        destination[prefix + "mask"] = pack(kept.to(torch.uint8), 1)
        destination[prefix + "values"] = weight[kept]
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        mask, values = state_dict.pop(prefix + "mask", None), state_dict.pop(prefix + "values", None)
        if mask is not None and values is not None:
            kept = unpack(mask, 1, self.in_features).bool()
            if kept.shape != (self.out_features, self.in_features) or int(kept.sum()) != values.numel():
                error_msgs.append(f"{prefix}mask/values: {int(kept.sum())} kept weights in the mask of shape "
                                  f"{tuple(kept.shape)}, but {values.numel()} values")
                return
            weight = torch.zeros(self.out_features, self.in_features, dtype=values.dtype, device=values.device)
            state_dict[prefix + "weight"] = weight.masked_scatter_(kept, values)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparsity={self.sparsity:.3f}"
