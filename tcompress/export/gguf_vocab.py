"""A tokenizer in GGUF metadata, as llama.cpp's two vocabulary models read it.

- `gpt2`: byte-level BPE (Llama 3, SmolLM, Qwen): the vocabulary, its merges, token types.
- `llama`: SentencePiece-style (Gemma): tokens with scores, byte tokens `<0xNN>` for the
  byte fallback. A fast tokenizer holds such a vocabulary as BPE merges; llama.cpp's
  SentencePiece tokenizer merges the pair whose merged token scores highest, so each token
  scores minus the rank of the merge that makes it (the first merge highest) — the same
  order of merges — and tokens no merge makes score below every merge.
"""

from __future__ import annotations

import json
import re
from typing import Any

import gguf

BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def add_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int, model: str) -> None:
    """Write `tokenizer`'s vocabulary as the GGUF tokenizer model `model` (gpt2 or llama)."""
    spec = bpe_spec(tokenizer)
    vocab = dict(spec["model"]["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {added["id"] for added in spec.get("added_tokens", []) if added.get("special")}
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"].get("merges", [])]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, index in vocab.items():
        if index < vocab_size:
            tokens[index] = text
            types[index] = token_type(text, index in special, model, getattr(tokenizer, "unk_token", None))
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if model == "gpt2":
        writer.add_token_scores([0.0] * vocab_size)  # BPE ranks live in the merges; transformers' reader wants the field
        writer.add_token_merges(merges)
    else:
        writer.add_token_scores(merge_scores(tokens, merges))
        writer.add_add_space_prefix(False)
    for role in ("bos", "eos", "unk", "pad"):
        index = getattr(tokenizer, f"{role}_token_id", None)
        if index is not None:
            getattr(writer, f"add_{role}_token_id")(index)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))


def bpe_spec(tokenizer: Any) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else None
    if spec is None or spec["model"]["type"] != "BPE":
        raise ValueError("GGUF export needs a fast BPE tokenizer (tokenizer.json with a BPE model)")
    return spec


def token_type(text: str, special: bool, model: str, unknown: str | None) -> gguf.TokenType:
    if text == unknown and model == "llama":
        return gguf.TokenType.UNKNOWN
    if special:
        return gguf.TokenType.CONTROL
    if model == "llama" and BYTE_TOKEN.match(text):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the merge that makes each token; single characters 0; other tokens
    (made by no merge) below every merge."""
    made = {}
    for rank, merge in enumerate(merges):
        made.setdefault(merge.replace(" ", "", 1), rank)
    floor = -float(len(merges) + 1)
    return [-float(made[t]) if t in made else (0.0 if len(t) == 1 else floor) for t in tokens]
