"""Data to distil on: token blocks of a corpus, or text the teacher writes itself.

Teacher-generated data is distillation from a black box: the teacher is any causal LM,
or any callable that maps prompts to continuations (`CompletionsAPI` calls an
OpenAI-style `/v1/completions` endpoint), and the student learns the text with the plain
next-token loss. Without prompts the teacher writes from its start-of-text token, so no
corpus is needed at all.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.data.text import check_positive, load_text, tokenize

Teacher = nn.Module | Callable[[list[str]], list[str]]


def text_blocks(source: str | os.PathLike, tokenizer: Any, seqlen: int = 512, n: int | None = None,
                split: str = "validation", text: str | None = None) -> Tensor:
    """Consecutive blocks of `seqlen` tokens over a corpus (or `text`), `[n, seqlen]`."""
    check_positive(seqlen=seqlen, n=n)
    ids = tokenize(text if text is not None else load_text(source, split), tokenizer)
    count = ids.numel() // seqlen
    if count == 0:
        raise ValueError(f"{'the text' if text is not None else repr(str(source))} has {ids.numel()} tokens, "
                         f"fewer than one block of seqlen={seqlen}")
    count = min(count, n) if n else count
    return ids[: count * seqlen].view(count, seqlen)


def generate_texts(teacher: Teacher, tokenizer: Any, prompts: Sequence[str] | None = None, n: int = 64,
                   max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 0.95, batch_size: int = 16,
                   seed: int = 0, progress: bool = True) -> list[str]:
    """Continuations written by `teacher`, one per prompt (or `n` from the start token),
    each returned with its prompt in front."""
    check_positive(n=n, max_new_tokens=max_new_tokens, batch_size=batch_size)
    prompts = list(prompts) if prompts is not None else [""] * n
    if not prompts:
        raise ValueError("prompts is empty: give some, or None to write from the start-of-text token")
    texts: list[str] = []
    batches = [prompts[i: i + batch_size] for i in range(0, len(prompts), batch_size)]
    for i, batch in enumerate(tqdm(batches, desc="teacher writes", disable=not progress)):
        if isinstance(teacher, nn.Module):
            written = _generate(teacher, tokenizer, batch, max_new_tokens, temperature, top_p, seed + i)
        else:
            written = list(teacher(batch))
            if len(written) != len(batch):
                raise ValueError(f"the teacher callable returned {len(written)} texts for {len(batch)} prompts")
        texts.extend(prompt + text for prompt, text in zip(batch, written))
    return texts


@torch.no_grad()
def _generate(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, temperature: float,
              top_p: float, seed: int) -> list[str]:
    start = tokenizer.bos_token or tokenizer.eos_token or ""
    inputs = [start + prompt if not prompt.startswith(start) else prompt for prompt in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        batch = tokenizer(inputs, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out = model.generate(**batch.to(device), do_sample=True, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def blocks_of_texts(texts: Sequence[str], tokenizer: Any, seqlen: int) -> Tensor:
    """The texts one after another, each ended by the end-of-text token, cut into blocks."""
    end = tokenizer.eos_token or ""
    return text_blocks("generated", tokenizer, seqlen, text="".join(text + end for text in texts))


@dataclass(frozen=True)
class CompletionsAPI:
    """A teacher behind an OpenAI-style completions endpoint (vLLM, llama.cpp server, ...):
    `CompletionsAPI("http://localhost:8000/v1", model="...")(prompts) -> texts`."""

    base_url: str
    model: str
    api_key: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    timeout: float = 300.0

    def __call__(self, prompts: list[str]) -> list[str]:
        body = {"model": self.model, "prompt": prompts, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url.rstrip("/") + "/completions", json.dumps(body).encode(),
                                         headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            choices = json.loads(response.read())["choices"]
        return [choice["text"] for choice in sorted(choices, key=lambda c: c.get("index", 0))]
