"""Check an export by loading it back: next-token agreement with the model it came from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tcompress.eval.lm import Fidelity, fidelity


def check_prompts(tokenizer: Any, count: int = 8, seqlen: int = 128) -> torch.Tensor:
    """The fixed prompt set: `count` windows of `seqlen` tokens of Python's documentation."""
    from tcompress.data.text import windows

    return windows("pydoc", tokenizer, seqlen=seqlen, limit=count)


def compare(reference: nn.Module, exported: nn.Module, tokenizer: Any) -> Fidelity:
    """KL and top-1 agreement of `exported`'s next-token predictions with `reference`'s."""
    return fidelity(reference, exported, check_prompts(tokenizer), batch_size=4, progress=False)
