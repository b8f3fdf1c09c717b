"""How closely a compressed model follows its original: next-token KL and top-1 agreement."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Fidelity:
    kl: float  # mean KL(reference || model) per token, in nats
    top1: float  # fraction of tokens where both predict the same next token


@torch.no_grad()
def fidelity(reference: nn.Module, model: nn.Module, windows: Tensor, batch_size: int = 1,
             progress: bool = True) -> Fidelity:
    """Compare next-token distributions of `model` against `reference` on `[n, seqlen]` ids."""
    if windows.ndim != 2 or windows.numel() == 0:
        raise ValueError(f"windows must be a non-empty [n, seqlen] tensor, got shape {tuple(windows.shape)}")
    kl_sum, agree, count = 0.0, 0, 0
    for batch in tqdm(windows.split(batch_size), desc="fidelity", disable=not progress):
        ref = _log_probs(reference, batch)  # [b, s, vocab]
        got = _log_probs(model, batch)
        kl_sum += (ref.exp() * (ref - got)).sum(-1).sum().item()
        agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
        count += ref.shape[0] * ref.shape[1]
    return Fidelity(kl=kl_sum / count, top1=agree / count)


def _log_probs(model: nn.Module, ids: Tensor) -> Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()
