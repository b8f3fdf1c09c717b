"""Sentence-embedding quality for encoders: cosine fidelity and STS-B Spearman."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, sentences: list[str], batch_size: int = 64,
          max_length: int = 256) -> Tensor:
    """Mean-pooled, L2-normalised sentence embeddings `[n, hidden]` (sentence-transformers style)."""
    if not sentences:
        raise ValueError("sentences is empty")
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start : start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # [b, s, h]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        chunks.append(nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(chunks)


def embedding_cosine(reference: nn.Module | Tensor, model: nn.Module, tokenizer: Any, sentences: list[str]) -> float:
    """Mean cosine similarity between the two models' embeddings of the same sentences;
    `reference` may be given as its embeddings already (when many models meet one)."""
    if isinstance(reference, nn.Module):
        reference = embed(reference, tokenizer, sentences)
    return (reference * embed(model, tokenizer, sentences)).sum(-1).mean().item()


def read_stsb(path: str | os.PathLike) -> tuple[list[str], list[str], list[float]]:
    """Sentence pairs and gold scores of a GLUE STS-B .tsv file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS-B file not found: {str(path)!r}")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    if not {"sentence1", "sentence2", "score"} <= set(header):
        raise ValueError(f"{str(path)!r} is not an STS-B file: expected columns sentence1, sentence2, score")
    i1, i2, iscore = header.index("sentence1"), header.index("sentence2"), header.index("score")
    body = rows[1:]
    return [r[i1] for r in body], [r[i2] for r in body], [float(r[iscore]) for r in body]


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[values.argsort(kind="stable")] = np.arange(len(values), dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]  # ties: their mean rank


def stsb_spearman(model: nn.Module, tokenizer: Any, path: str | os.PathLike) -> float:
    """Spearman correlation between embedding cosine and STS-B gold scores."""
    first, second, gold = read_stsb(path)
    cosine = (embed(model, tokenizer, first) * embed(model, tokenizer, second)).sum(-1)
    return spearman(cosine.numpy(), gold)
