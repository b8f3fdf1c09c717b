"""Check an export by loading it back: next-token agreement with the model it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tcompress.data.text import windows
from tcompress.eval.lm import Fidelity, agreement, fidelity


def check_prompts(tokenizer: Any, count: int = 8, seqlen: int = 128) -> torch.Tensor:
    """The fixed prompt set: `count` windows of `seqlen` tokens of Python's documentation."""
    return windows("pydoc", tokenizer, seqlen=seqlen, limit=count)


def compare(reference: nn.Module, exported: nn.Module, tokenizer: Any) -> Fidelity:
    """KL and top-1 agreement of `exported`'s next-token predictions with `reference`'s."""
    return fidelity(reference, exported, check_prompts(tokenizer), batch_size=4, progress=False)


def llama_cpp_available() -> bool:
    """Whether `llama-cpp-python` is installed (then GGUF exports are checked in llama.cpp too)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def compare_in_llama_cpp(reference: nn.Module, path: str | Path, tokenizer: Any) -> Fidelity:
    """KL and top-1 agreement of llama.cpp running the GGUF file `path` with `reference`, on
    the check prompts (needs `llama-cpp-python`)."""
    import llama_cpp

    windows = check_prompts(tokenizer)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=windows.shape[1], n_batch=windows.shape[1], logits_all=True,
                          n_threads=torch.get_num_threads(), verbose=False)
    kl_sum, agree = 0.0, 0
    for ids in windows:
        llm.reset()
        llm.eval(ids.tolist())
        got = torch.log_softmax(torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32)), dim=-1)
        ref = torch.log_softmax(reference(input_ids=ids[None], use_cache=False).logits[0].float(), dim=-1)
        kl, same = agreement(ref, got)
        kl_sum, agree = kl_sum + kl, agree + same
    return Fidelity(kl=kl_sum / windows.numel(), top1=agree / windows.numel())
