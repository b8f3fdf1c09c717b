"""How much each head, FFN channel and block matters, measured on calibration data in one
forward pass of the unpruned model.

Every score is an energy relative to the block's input: the squared norm, summed over the
calibration tokens, of what the part adds to the residual stream, divided by the squared
norm of the block's input. So a head, a channel and a whole block are compared in the
same unit. A head's energy is exactly ‖X_h W_hᵀ‖² (from the Gram matrix of the attention
output projection's input); a channel's is Σ x_j² ‖w_j‖², which leaves out the cross terms
between channels; a block's is ‖output - input‖². Blocks are also ranked by their angular
distance 1 - cos(input, output) (ShortGPT's block influence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.core.modules import linear_weight
from tcompress.engine.inputs import batches_of, call_model, no_kv_cache
from tcompress.models.adapters import Adapter


@dataclass
class Importance:
    heads: Tensor | None  # [blocks, heads] relative energy of each query head, None where not measured
    channels: Tensor  # [blocks, ffn width] relative energy of each FFN channel
    blocks: Tensor  # [blocks] relative energy of each block's change to the residual stream
    influence: Tensor  # [blocks] mean 1 - cos(input, output) over tokens


def measure(model: nn.Module, parts: Adapter, calib: Any, heads: bool = True, progress: bool = True) -> Importance:
    """Scores of every block's heads (if `heads`), FFN channels and the blocks themselves."""
    blocks = parts.blocks()
    n = len(blocks)
    grams = [None] * n  # attention output projection's input Gram, [width, width]
    squares = [None] * n  # FFN output linear's input, sum of squares per channel
    residual = torch.zeros(n, dtype=torch.float64)
    change = torch.zeros(n, dtype=torch.float64)
    cosine = torch.zeros(n, dtype=torch.float64)
    tokens = [0] * n

    def on_attn_out(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            grams[i] = x.t() @ x if grams[i] is None else grams[i].addmm_(x.t(), x)
        return hook

    def on_ffn_out(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            squares[i] = x.pow(2).sum(0) if squares[i] is None else squares[i].add_(x.pow(2).sum(0))
        return hook

    def on_block(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
            residual[i] += x.pow(2).sum()
            change[i] += (y - x).pow(2).sum()
            cosine[i] += nn.functional.cosine_similarity(x, y, dim=-1).sum()
            tokens[i] += x.shape[0]
        return hook

    handles = []
    for i, block in enumerate(blocks):
        if heads:
            handles += [linear.register_forward_pre_hook(on_attn_out(i)) for linear in block.attn_out.values()]
        handles += [linear.register_forward_pre_hook(on_ffn_out(i)) for linear in block.ffn_out.values()]
        handles.append(block.module.register_forward_hook(on_block(i), with_kwargs=True))
    try:
        with torch.no_grad(), no_kv_cache(model):
            for batch in tqdm(batches_of(calib), desc="importance", disable=not progress):
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    head_energy = torch.stack([_head_energy(parts, b, g) for b, g in zip(blocks, grams)]) if heads else None
    channel_energy = torch.stack([_channel_energy(b, s) for b, s in zip(blocks, squares)])
    scale = residual.float().clamp(min=1e-30)
    return Importance(
        heads=None if head_energy is None else head_energy / scale[:, None],
        channels=channel_energy / scale[:, None],
        blocks=(change / residual.clamp(min=1e-30)).float(),
        influence=(1 - cosine / torch.tensor(tokens, dtype=torch.float64).clamp(min=1)).float(),
    )


def _head_energy(parts: Adapter, block, gram: Tensor) -> Tensor:
    """‖X_h W_hᵀ‖² of every query head h: trace(W_h G_hh W_hᵀ)."""
    (o,) = block.attn_out.values()
    w = linear_weight(o).detach().float()  # [hidden, heads * head_dim]
    d = parts.head_dim
    return torch.stack([((w[:, h * d : (h + 1) * d] @ gram[h * d : (h + 1) * d, h * d : (h + 1) * d])
                         * w[:, h * d : (h + 1) * d]).sum() for h in range(w.shape[1] // d)])


def _channel_energy(block, squares: Tensor) -> Tensor:
    """Σ_tokens x_j² ‖w_j‖² of every FFN channel j."""
    (down,) = block.ffn_out.values()
    return squares * linear_weight(down).detach().float().pow(2).sum(0)
