"""The peak memory of a layer-wise run, predicted from shapes before any work, and measured.

A run holds, at its peak: the process itself (Python, torch, transformers, the tokenizer);
the weights (all of them in memory, or with `lazy=True` those outside the blocks and one
block, read through a memory map, so twice while it is read); every calibration token's
hidden state twice (a block's inputs and its outputs); the activations a block's forward
keeps (a true-sequential method pauses every chunk at the linear it changes next, so every
token's kept activations are alive at once; other methods run one chunk at a time); and the
larger of one chunk's transients and the method's statistics of one block plus its work on
the largest linear (which it does while every chunk waits). `predict_peak` sums
these from the model's shapes (an empty model built on the meta device serves as well), so
`--max-memory` can refuse a run before it loads anything.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field

from torch import nn

from tcompress.engine.method import BlockMethod, LinearMethod, Method
from tcompress.models.adapters import Block, adapter

PROCESS_BYTES = 380 * 10**6  # Python with torch, transformers and a tokenizer loaded, before any model
GB = 1e9


@dataclass
class MemoryEstimate:
    """Predicted peak resident memory of a run, in bytes, by what holds it."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def text(self) -> str:
        parts = ", ".join(f"{name} {value / GB:.2f}" for name, value in self.parts.items() if value)
        return f"{self.total / GB:.2f} GB ({parts})"


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count by shape), each tensor once."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def predict_peak(model: nn.Module, method: Method | None, samples: int, seqlen: int, *, lazy: bool = False,
                 chunk_tokens: int = 16384) -> MemoryEstimate:
    """The peak resident memory of `tc.apply(model, method, calib)` over `samples` × `seqlen`
    tokens, with the model in memory or streamed (`lazy`)."""
    parts = adapter(model)
    blocks = parts.blocks() if parts.blocks_name else []
    block = max(blocks, key=lambda b: tensor_bytes(b.module), default=None)
    block_bytes = tensor_bytes(block.module) if block else 0
    outside = tensor_bytes(model) - sum(tensor_bytes(b.module) for b in blocks)
    hidden, wide = widths(block.linears if block else {})
    element = next(model.parameters()).element_size()
    tokens = samples * seqlen
    chunk = min(tokens, max(chunk_tokens, seqlen))
    estimate = MemoryEstimate({"process": PROCESS_BYTES})
    # streamed: a block is read through a memory map, so it is resident twice while it is read
    estimate.parts["weights"] = outside + 2 * block_bytes if lazy else tensor_bytes(model) + block_bytes // 4
    estimate.parts["hidden states"] = 2 * tokens * hidden * element
    kept = (wide + 3 * hidden) * element  # a token's activations a paused forward keeps: the FFN's widest, residuals
    pausing = isinstance(method, BlockMethod) or getattr(method, "true_sequential", False)
    estimate.parts["activations"] = (tokens if pausing else chunk) * kept
    # while a chunk runs, its transients (the FFN's two wide products); while the method changes
    # a linear (every chunk paused), its statistics and work: the larger of the two
    running = chunk * 2 * wide * element
    changing = method_bytes(method, block) if method and block else 0
    estimate.parts["chunk" if running >= changing else "method"] = max(running, changing)
    return estimate


def widths(linears: dict[str, nn.Module]) -> tuple[int, int]:
    """The hidden size (the commonest input width) and the widest activation of a block's linears."""
    shapes = [linear_shape(linear) for linear in linears.values()]
    if not shapes:
        return 0, 0
    inputs = [n_in for _, n_in in shapes]
    return max(set(inputs), key=inputs.count), max(max(n_in, n_out) for n_out, n_in in shapes)


def linear_shape(linear: nn.Module) -> tuple[int, int]:
    """`(out, in)` of a linear or a packed one."""
    if hasattr(linear, "in_features") and hasattr(linear, "out_features"):
        return linear.out_features, linear.in_features
    return tuple(linear.weight.shape[:2])


def method_bytes(method: Method, block: Block) -> int:
    """A method's statistics of one block (one a group of linears fed the same input, where the
    method shares them) and its work on the block's largest linear."""
    if not isinstance(method, (LinearMethod, BlockMethod)) or not block.linears:
        return 0
    shared = getattr(method, "input_only_stats", False)
    observed = [next(iter(group.values())) for group in block.groups()] if shared else list(block.linears.values())
    work = max(method.work_bytes(linear_shape(linear)) for linear in block.linears.values())
    return sum(method.stats_bytes(linear_shape(linear)) for linear in observed) + work


def peak_rss() -> int:
    """The process's peak resident memory so far (the kernel's high-water mark), in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
