"""Token merging (ToMe, Bolya et al., 2023, arXiv:2210.09461): fewer tokens in each block.

After each block's attention, the tokens are split alternately into two sets; every token
of the first set finds its most similar token of the second (cosine of the attention keys,
averaged over heads), and the `r` best-matched pairs are merged by a size-weighted mean.
Attention then counts a merged token as the `s` tokens it stands for (proportional
attention: log s added to its attention logits). The class (and distillation) tokens are
never merged. No training, no parameters: `merge_tokens(model, r)` switches it on for any
Hugging Face ViT/DeiT, `unmerge_tokens(model)` off; with r = 0 the model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tcompress.core.modules import replace_module
from tcompress.models.adapters import adapter


@dataclass
class Sizes:
    """How many original tokens each current token stands for, `[b, tokens, 1]`; shared by
    the blocks of one model and reset at the first."""

    value: Tensor | None = None


class MergingBlock(nn.Module):
    """A ViT block whose forward merges `r` tokens after attention."""

    def __init__(self, block: nn.Module, r: int, protected: int, sizes: Sizes, first: bool):
        super().__init__()
        self.block, self.r, self.protected, self.sizes, self.first = block, r, protected, sizes, first

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        if self.first:
            self.sizes.value = None
        block = self.block
        attended, keys = self._attention(block.layernorm_before(hidden_states))
        hidden_states = hidden_states + attended
        if self.r:
            hidden_states, self.sizes.value = merge(hidden_states, keys, self.sizes.value, self.r, self.protected)
        return hidden_states + block.mlp(block.layernorm_after(hidden_states))

    def _attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention with proportional attention; also the keys averaged over heads."""
        attention = self.block.attention
        b, n, _ = x.shape
        shape = (b, n, -1, attention.head_dim)
        q, k, v = (proj(x).view(shape) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        bias = None if self.sizes.value is None else self.sizes.value.log()[:, None, None, :, 0]  # [b, 1, 1, n]
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                         attn_mask=bias, scale=attention.scaling)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return attention.o_proj(out), k.mean(2)


def merge(x: Tensor, metric: Tensor, sizes: Tensor | None, r: int, protected: int) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching: merge `r` tokens of `x` `[b, n, d]` by similarity of
    `metric` `[b, n, k]`, size-weighted. The first `protected` tokens stay first and
    unmerged; the others alternate between the two sets."""
    b, n, d = x.shape
    unit = metric[:, protected:] / metric[:, protected:].norm(dim=-1, keepdim=True)
    best, match = (unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)).max(dim=-1)  # per token of set a: [b, n_a]
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values  # kept tokens stay in their order
    target = match.gather(1, merged)  # [b, r]
    # the size-weighted tokens and their sizes side by side, so one gather and one scatter merge both
    weighted = torch.cat([x, x.new_ones(b, n, 1)], dim=-1) if sizes is None else torch.cat([x * sizes, sizes], dim=-1)
    head, body = weighted[:, :protected], weighted[:, protected:]
    src, dst = body[:, ::2], body[:, 1::2]
    moved = src.gather(1, merged[..., None].expand(b, r, d + 1))
    dst = dst.scatter_reduce(1, target[..., None].expand(b, r, d + 1), moved, reduce="sum")
    out = torch.cat([head, src.gather(1, kept[..., None].expand(b, kept.shape[1], d + 1)), dst], dim=1)
    sizes_after = out[..., d:]
    return out[..., :d] / sizes_after, sizes_after


def protected_tokens(model: nn.Module) -> int:
    """The class token, and DeiT's distillation token where the model has one."""
    embeddings = getattr(getattr(model, "vit", None) or getattr(model, "deit", None) or model, "embeddings", None)
    return 1 + (getattr(embeddings, "distillation_token", None) is not None)


def merge_tokens(model: nn.Module, r: int | list[int]) -> nn.Module:
    """Switch token merging on, in place: `r` tokens merged per block (or one `r` a block)."""
    unmerge_tokens(model)
    parts = adapter(model)
    if parts.family is None or parts.family.name != "vit":
        raise ValueError(f"token merging needs a ViT/DeiT model, got a {parts.name} model")
    blocks = parts.block_list()
    schedule = [r] * len(blocks) if isinstance(r, int) else list(r)
    if len(schedule) != len(blocks) or any(not isinstance(x, int) or x < 0 for x in schedule):
        raise ValueError(f"r must be an integer >= 0 or a list of {len(blocks)} of them, got {r!r}")
    protected = protected_tokens(model)
    tokens = (model.config.image_size // model.config.patch_size) ** 2 + protected
    for index, count in enumerate(schedule):
        mergeable = (tokens - protected) // 2  # at most every token of the smaller set
        if count > mergeable:
            raise ValueError(f"r={count} at block {index}: only {tokens} tokens are left there, so at most "
                             f"{mergeable} can merge; use a smaller r")
        tokens -= count
    sizes = Sizes()
    for index, (block, count) in enumerate(zip(blocks, schedule)):
        replace_module(model, f"{parts.blocks_name}.{index}", MergingBlock(block, count, protected, sizes, index == 0))
    return model


def unmerge_tokens(model: nn.Module) -> nn.Module:
    """Switch token merging off, in place (a no-op where it is off)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MergingBlock):
            replace_module(model, name, module.block)
    return model
