"""Structured surgery: remove attention heads, FFN channels or whole blocks, so the tensors
and the config really shrink and the result is an ordinary, smaller model.

Heads and channels are removed in the same number from every block (the configs of
transformers hold one head count and one FFN width for all layers), which ones by each
block's own scores. A KV head goes only together with every query head that shares it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.core.modules import conv1d_type, linear_weight, replace_module
from tcompress.models.adapters import Adapter, Block


def keep_outputs(linear: nn.Module, index: Tensor) -> nn.Module:
    """A copy of `linear` computing only the outputs `index`."""
    return _rebuilt(linear, linear_weight(linear)[index], None if linear.bias is None else linear.bias[index])


def keep_inputs(linear: nn.Module, index: Tensor) -> nn.Module:
    """A copy of `linear` reading only the inputs `index`."""
    return _rebuilt(linear, linear_weight(linear)[:, index], linear.bias)


def _rebuilt(linear: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    out_features, in_features = weight.shape
    if isinstance(linear, conv1d_type()):
        new = type(linear)(out_features, in_features)
        new.weight.data = weight.t().contiguous().clone()
        new.bias.data = bias.clone() if bias is not None else torch.zeros(out_features, dtype=weight.dtype)
        return new.to(weight.device)
    new = nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.data = weight.clone()
    if bias is not None:
        new.bias.data = bias.clone()
    return new


def keep_channels(model: nn.Module, block: Block, index: Tensor) -> None:
    """Keep the FFN channels `index` of `block`: rows of the FFN input linears (gate and
    up together), columns of the output linear."""
    for name, linear in block.ffn_in.items():
        replace_module(model, name, keep_outputs(linear, index))
    for name, linear in block.ffn_out.items():
        replace_module(model, name, keep_inputs(linear, index))


def keep_heads(model: nn.Module, parts: Adapter, block: Block, heads: list[int]) -> None:
    """Keep the query heads `heads` of `block` (each KV group must keep the same number,
    and a KV head whose query heads all go, goes too)."""
    per_group = parts.num_heads // parts.num_kv_heads
    groups = sorted({head // per_group for head in heads})
    counts = {g: sum(1 for head in heads if head // per_group == g) for g in groups}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every KV group must keep as many query heads; got {counts}")
    q_rows, kv_rows = _rows(sorted(heads), parts.head_dim), _rows(groups, parts.head_dim)
    q, k, v = block.attn_in.items()
    (o_name, o), = block.attn_out.items()
    replace_module(model, q[0], keep_outputs(q[1], q_rows))
    replace_module(model, k[0], keep_outputs(k[1], kv_rows))
    replace_module(model, v[0], keep_outputs(v[1], kv_rows))
    replace_module(model, o_name, keep_inputs(o, q_rows))
    attention = block.module.get_submodule(parts.family.attention)
    if hasattr(attention, "num_key_value_groups"):
        attention.num_key_value_groups = len(heads) // len(groups)
    if hasattr(attention, "num_attention_heads"):
        attention.num_attention_heads = len(heads)


def _rows(heads: list[int], head_dim: int) -> Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]) if heads else torch.zeros(0, dtype=torch.long)


def drop_blocks(model: nn.Module, parts: Adapter, indices: list[int]) -> None:
    """Remove the blocks `indices`; the rest are renumbered (their KV cache slots too)."""
    blocks = model.get_submodule(parts.blocks_name)
    kept = [block for i, block in enumerate(blocks) if i not in set(indices)]
    replace_module(model, parts.blocks_name, nn.ModuleList(kept))
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        model.config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(indices)]
