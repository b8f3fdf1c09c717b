"""Language-model quality: perplexity over non-overlapping windows (the GPTQ protocol), and
fidelity of a compressed model to its original (next-token KL and top-1 agreement)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress import data
from tcompress.checkpoint.lazy import require_materialized
from tcompress.core.memory import reuse_freed_memory


def context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_seqlen(model: nn.Module, seqlen: int) -> None:
    """Refuse windows longer than the model's context, before any work."""
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise ValueError(f"seqlen={seqlen} exceeds the model's context of {limit} tokens")


def eval_windows(model: nn.Module, tokenizer: Any, source: str | os.PathLike | Tensor, seqlen: int,
                 limit: int | None) -> Tensor:
    """`source` as `[n, seqlen]` windows: already-made windows pass through (checked)."""
    check_seqlen(model, seqlen if not isinstance(source, Tensor) else source.shape[-1])
    if isinstance(source, Tensor):
        if source.ndim != 2 or source.numel() == 0:
            raise ValueError(f"windows must be a non-empty [n, seqlen] tensor, got shape {tuple(source.shape)}")
        return source[:limit] if limit else source
    return data.windows(source, tokenizer, seqlen=seqlen, limit=limit)


@torch.no_grad()
def window_nlls(model: nn.Module, windows: Tensor, batch_size: int = 1, progress: bool = True) -> Tensor:
    """Mean next-token negative log-likelihood of each window, `[n]`."""
    require_materialized(model, "evaluation")
    device = next(model.parameters()).device
    nlls = []
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits  # [b, s, vocab]
        nlls.append(token_nlls(logits[:, :-1], batch[:, 1:]).mean(dim=1).cpu())
        del logits
    return torch.cat(nlls)


def token_nlls(logits: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """Next-token negative log-likelihoods `[b, s]` of `targets` `[b, s]` under `logits`
    `[b, s, vocab]`, a chunk of positions at a time (a 262k-token vocabulary makes a window's
    logits gigabytes; the log-softmax of all of them at once would take several times that)."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, targets.shape[1], chunk):
        part = logits[:, start:start + chunk].float()
        out[:, start:start + chunk] = nn.functional.cross_entropy(part.transpose(1, 2), targets[:, start:start + chunk],
                                                                  reduction="none")
    return out


def perplexity(model: nn.Module, tokenizer: Any, source: str | os.PathLike | Tensor = "wikitext2", *,
               seqlen: int = 2048, windows: int | None = None, batch_size: int = 1, progress: bool = True) -> float:
    """exp(mean NLL) over the first `windows` windows of `seqlen` tokens of `source`.

    `source` is a corpus name, a text file, or a `[n, seqlen]` tensor of token ids.
    """
    was_training = model.training
    model.eval()
    try:
        with reuse_freed_memory():  # each window allocates the same large logits again
            nlls = window_nlls(model, eval_windows(model, tokenizer, source, seqlen, windows), batch_size, progress)
    finally:
        model.train(was_training)
    return math.exp(nlls.mean().item())


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
        kl, same = agreement(_log_probs(reference, batch), _log_probs(model, batch))  # [b, s, vocab] each
        kl_sum, agree, count = kl_sum + kl, agree + same, count + batch.numel()
    return Fidelity(kl=kl_sum / count, top1=agree / count)


def agreement(ref: Tensor, got: Tensor) -> tuple[float, int]:
    """Summed KL(ref || got) and the count of equal top-1 predictions, over log-probabilities
    `[..., vocab]` of the same tokens."""
    return (ref.exp() * (ref - got)).sum().item(), int((ref.argmax(-1) == got.argmax(-1)).sum().item())


def _log_probs(model: nn.Module, ids: Tensor) -> Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def rolling_nll(model: nn.Module, ids: list[int], prefix: int, max_length: int) -> float:
    """Summed negative log-likelihood of every token of `ids` in windows of `max_length`: the
    first window starts from the `prefix` token, each later one is the `max_length` tokens
    before the ones it predicts, which are scored on its last logits (lm-evaluation-harness's
    rolling log-likelihood, so both compute the same figure)."""
    device = next(model.parameters()).device
    total, done = 0.0, 0
    while done < len(ids):
        end = min(done + max_length, len(ids))
        inputs = [prefix, *ids[:end - 1]] if done == 0 else ids[end - max_length - 1 : end - 1]
        window = torch.tensor([inputs], device=device)
        logits = model(input_ids=window, use_cache=False).logits[0].float()
        targets = torch.tensor(ids[done:end], device=device)
        total += nn.functional.cross_entropy(logits[-len(targets):], targets, reduction="sum").item()
        done = end
    return total
