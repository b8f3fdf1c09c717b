"""What the layer-wise engine holds between blocks: each calibration batch's inputs to the
current block, and the means to capture, merge and run them.

`capture` runs the model up to its first block and records what the block receives (hidden
states and every other argument: masks, position ids, rotary embeddings); `BlockRunner` runs
one block over them on a device, keeping results on the offload device; `merged` joins the
batches into one where they can be concatenated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

Calibration = Tensor | list[Any]  # [n, seqlen] token ids, or a list of model inputs


@dataclass
class BlockInputs:
    """What each calibration batch feeds the current block."""

    hidden: list[Tensor]  # one per batch, on the offload device
    args: list[tuple]  # further positional arguments
    kwargs: list[dict[str, Any]]
    positional: bool  # hidden states passed positionally (else as `hidden_states=`)
    # blocks whose other arguments differ from the first block's (a sliding-window layer's
    # mask and rotary tables, in models that mix layer types): block index -> (args, kwargs)
    later: dict[int, tuple[list[tuple], list[dict[str, Any]]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.hidden)

    def at(self, index: int) -> BlockInputs:
        """The inputs of block `index`: these hidden states with that block's other arguments."""
        if index not in self.later:
            return self
        args, kwargs = self.later[index]
        return BlockInputs(self.hidden, args, kwargs, self.positional)


class StopForward(Exception):
    """Ends a forward early: once the first block's inputs are recorded, or a group observed."""


def batches_of(calib: Calibration, batch_size: int = 1) -> list[Any]:
    """Split calibration data into model inputs of `batch_size` samples."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(calib, Tensor):
        if calib.ndim == 0 or len(calib) == 0:
            raise ValueError("calibration data is empty")
        return list(calib.split(batch_size))
    batches = list(calib)
    if not batches:
        raise ValueError("calibration data is empty")
    return batches


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run `model` on one batch: a dict of inputs, token ids, pixels, or a plain tensor."""
    if isinstance(batch, dict):
        return model(**batch)
    if getattr(model, "main_input_name", None) and isinstance(batch, Tensor):
        return model(**{model.main_input_name: batch})
    return model(batch)


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    config = getattr(model, "config", None)
    saved = getattr(config, "use_cache", None)
    if saved is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if saved is not None:
            config.use_cache = saved


def capture(model: nn.Module, blocks: list[nn.Module] | nn.ModuleList, batches: list[Any],
            offload: str | torch.device) -> BlockInputs:
    """Run the model up to its first block on every batch and record what the block gets; in
    a model whose blocks are of several types (`config.layer_types`: sliding-window and full
    attention, say), also what every later block gets besides the hidden states, the blocks
    then standing aside (each passes its input on) so the capture costs no block forward."""
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if not (isinstance(blocks, nn.ModuleList) and isinstance(types, (list, tuple)) and len(set(types)) > 1
            and len(types) == len(blocks)):
        first = Recorder(0, last=True)
        handle = blocks[0].register_forward_pre_hook(lambda m, args, kwargs: first(*args, **kwargs), with_kwargs=True)
        try:
            run_all(model, batches)
        finally:
            handle.remove()
        return first.inputs(len(batches), offload)
    recorders = [Recorder(i, last=i == len(blocks) - 1) for i in range(len(blocks))]
    originals = list(blocks)
    for i, recorder in enumerate(recorders):
        blocks[i] = recorder
    try:
        run_all(model, batches)
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original
    inputs = recorders[0].inputs(len(batches), offload)
    for recorder in recorders[1:]:
        if not same_arguments((recorder.args, recorder.kwargs), (inputs.args, inputs.kwargs)):
            inputs.later[recorder.index] = (recorder.args, recorder.kwargs)
    return inputs


def run_all(model: nn.Module, batches: list[Any]) -> None:
    """Run the model on every batch, each forward ended where a recorder ends it."""
    with torch.no_grad(), no_kv_cache(model):
        for batch in batches:
            with contextlib.suppress(StopForward):
                call_model(model, batch)


class Recorder(nn.Module):
    """Stands in for a block while inputs are captured: records what it gets and passes its
    hidden states on (the last one, or the only one recorded, ends the forward)."""

    def __init__(self, index: int, last: bool):
        super().__init__()
        self.index, self.last = index, last
        self.hidden, self.args, self.kwargs, self.positional = [], [], [], True

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        kwargs = dict(kwargs)
        self.positional = bool(args)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.hidden.append(hidden if self.index == 0 else None)
        self.args.append(tuple(args[1:]))
        self.kwargs.append(kwargs)
        if self.last:
            raise StopForward
        return hidden

    def inputs(self, batches: int, offload: str | torch.device) -> BlockInputs:
        """What the first block got, as `BlockInputs` (its hidden states moved to `offload`)."""
        if len(self.hidden) != batches:
            raise RuntimeError("the first block was not reached on every calibration batch")
        return BlockInputs([h.to(offload) for h in self.hidden], self.args, self.kwargs, self.positional)


def same_arguments(a: Any, b: Any) -> bool:
    """Whether two captured argument structures hold the same values (tensors equal)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_arguments(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_arguments(a[k], b[k]) for k in a)
    return a is b or a == b


def _to(value: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return value
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


class BlockRunner:
    """Runs one block over the stored inputs, on `device`, keeping results on `offload`."""

    def __init__(self, block: nn.Module, device: torch.device | str | None, offload: torch.device | str):
        self.block, self.device, self.offload = block, device, offload

    def __call__(self, inputs: BlockInputs, index: int, hidden: Tensor | None = None) -> Tensor:
        hidden = inputs.hidden[index] if hidden is None else hidden
        args, kwargs = _to(inputs.args[index], self.device), _to(inputs.kwargs[index], self.device)
        hidden = _to(hidden, self.device)
        with torch.no_grad():
            out = self.block(hidden, *args, **kwargs) if inputs.positional else self.block(*args, hidden_states=hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def propagate(self, inputs: BlockInputs) -> None:
        """Replace each stored input by the block's output on it."""
        for index in range(len(inputs)):
            inputs.hidden[index] = self(inputs, index).to(self.offload)


def merged(inputs: BlockInputs) -> BlockInputs | None:
    """All batches as one (hidden states concatenated, per-sample arguments such as padding
    masks too, shared ones such as rotary embeddings kept once); None where they differ in
    a way that cannot be concatenated (lengths, flags)."""
    if len(inputs) == 1:
        return inputs
    hidden = inputs.hidden
    if len({h.shape[1:] for h in hidden}) != 1:
        return None
    sizes = [h.shape[0] for h in hidden]
    try:
        args = _merge_values(list(inputs.args), sizes)
        kwargs = _merge_values(list(inputs.kwargs), sizes)
    except Unmergeable:
        return None
    return BlockInputs([torch.cat(hidden)], [args], [kwargs], inputs.positional)


class Unmergeable(Exception):
    pass


def _merge_values(values: list[Any], sizes: list[int]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        if all(isinstance(v, Tensor) and v.shape == first.shape and torch.equal(v, first) for v in values):
            return first
        if all(isinstance(v, Tensor) and v.ndim and v.shape[0] == n and v.shape[1:] == first.shape[1:]
               for v, n in zip(values, sizes)):
            return torch.cat(values)
        raise Unmergeable
    if isinstance(first, (tuple, list)):
        if any(not isinstance(v, type(first)) or len(v) != len(first) for v in values):
            raise Unmergeable
        return type(first)(_merge_values([v[i] for v in values], sizes) for i in range(len(first)))
    if isinstance(first, dict):
        if any(not isinstance(v, dict) or v.keys() != first.keys() for v in values):
            raise Unmergeable
        return {key: _merge_values([v[key] for v in values], sizes) for key in first}
    if any(v is not first and v != first for v in values):
        raise Unmergeable
    return first


def chunked(inputs: BlockInputs, tokens: int) -> BlockInputs | None:
    """The batches joined into chunks of about `tokens` tokens each (`merged` a run of
    consecutive batches at a time; a batch larger than that is a chunk of its own), so a
    block runs over a few large batches with bounded activations; None where they cannot be
    joined. `split(chunks.hidden, sizes_of(inputs))` cuts the chunks' outputs back into batches."""
    counts = [h[..., 0].numel() for h in inputs.hidden]  # tokens in each batch
    chunks, start = [], 0
    while start < len(inputs):
        end, size = start, 0
        while end < len(inputs) and (end == start or size + counts[end] <= tokens):
            size += counts[end]
            end += 1
        chunk = merged(BlockInputs(inputs.hidden[start:end], inputs.args[start:end], inputs.kwargs[start:end],
                                   inputs.positional))
        if chunk is None:
            return None
        chunks.append(chunk)
        start = end
    return BlockInputs([c.hidden[0] for c in chunks], [c.args[0] for c in chunks], [c.kwargs[0] for c in chunks],
                       inputs.positional)


def sizes_of(inputs: BlockInputs) -> list[int]:
    """Samples in each batch."""
    return [h.shape[0] for h in inputs.hidden]


def split(hidden: list[Tensor], sizes: list[int]) -> list[Tensor]:
    """Tensors of one or more consecutive batches each, in order, cut back into batches of
    `sizes` samples (views, not copies)."""
    sizes_left = iter(sizes)
    pieces = []
    for joined in hidden:
        own: list[int] = []
        while sum(own) < joined.shape[0]:
            own.append(next(sizes_left))
        pieces.extend(joined.split(own))
    return pieces


def home(module: nn.Module) -> torch.device | None:
    """Where a block's weights are; None where accelerate's hooks place them (meta)."""
    tensor = next(module.parameters(), None)
    return None if tensor is None or tensor.is_meta else tensor.device


@contextlib.contextmanager
def placed(module: nn.Module, device: torch.device | str | None) -> Iterator[None]:
    """Move `module` to `device` for the duration, then back where it was."""
    if device is None:
        yield
        return
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield
    finally:
        module.to(home)
