"""The layer-wise engine: run a model block by block over calibration data.

It captures what the first block receives (hidden states and every other argument: masks,
position ids, rotary embeddings), then for each block in order: a method observes the
inputs of the linears it changes and updates the block; the block runs again and its
outputs, computed after the update, become the next block's inputs. Only one block's
activations are held at a time (kept on `offload`, default CPU, while the block itself
may run on another device), so each block is compressed on the outputs of the already
compressed blocks before it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.methods import BlockMethod, LinearMethod, Method, replace_module
from tcompress.models.adapters import Block, adapter, linear_weight
from tcompress.runtime.heap import reuse_freed_memory

Calibration = Tensor | list[Any]  # [n, seqlen] token ids, or a list of model inputs


@dataclass
class BlockInputs:
    """What each calibration batch feeds the current block."""

    hidden: list[Tensor]  # one per batch, on the offload device
    args: list[tuple]  # further positional arguments
    kwargs: list[dict[str, Any]]
    positional: bool  # hidden states passed positionally (else as `hidden_states=`)

    def __len__(self) -> int:
        return len(self.hidden)


class _StopForward(Exception):
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


def capture(model: nn.Module, first_block: nn.Module, batches: list[Any], offload: str | torch.device) -> BlockInputs:
    """Run the model up to `first_block` on every batch and record what the block gets."""
    inputs = BlockInputs([], [], [], positional=True)

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        inputs.positional = bool(args)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.hidden.append(hidden.to(offload))
        inputs.args.append(tuple(args[1:]))
        inputs.kwargs.append(kwargs)
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), no_kv_cache(model):
            for batch in batches:
                with contextlib.suppress(_StopForward):
                    call_model(model, batch)
    finally:
        handle.remove()
    if len(inputs) != len(batches):
        raise RuntimeError("the first block was not reached on every calibration batch")
    return inputs


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


def observe_and_apply(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                      run: BlockRunner) -> dict[str, nn.Module]:
    """Hand each selected linear's inputs to the method, then let it change the linear.

    Returns the replacement modules (e.g. packed ones) to put in place once the block is
    done; until then each replaced linear computes with its replacement's weight."""
    groups = block.groups() if method.true_sequential else [block.linears]
    replacements = {}
    for group in groups:
        chosen = {name: linear for name, linear in group.items() if method.selects(name, linear)}
        if not chosen:
            continue
        stats = observe(method, chosen, inputs, run)
        changed = {name: method.apply(linear, stats.pop(name), name) for name, linear in chosen.items()}
        changed = {name: new for name, new in changed.items() if new is not None and new is not chosen[name]}
        replacements.update(stand_in_for(model, block, changed))
    return replacements


def stand_in_for(model: nn.Module, block: Block, replacements: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Let the block's linears stand in for their `replacements` until its outputs are computed;
    replace at once those that cannot. Returns the replacements still to put in place."""
    linears = block.linears
    waiting = {}
    for name, new in replacements.items():
        if name in linears and _stand_in(linears[name], new):
            waiting[name] = new
        else:
            replace_module(model, name, new)
    return waiting


def _stand_in(linear: nn.Module, new: nn.Module) -> bool:
    """Give `linear` the weight `new` computes with, so the block's later passes need not
    unpack it on every call; False where `new` has no such weight."""
    if not hasattr(new, "dequantize"):
        return False
    linear_weight(linear).copy_(new.dequantize(linear.weight.dtype))
    return True


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
    except _Unmergeable:
        return None
    return BlockInputs([torch.cat(hidden)], [args], [kwargs], inputs.positional)


class _Unmergeable(Exception):
    pass


def _merge_values(values: list[Any], sizes: list[int]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        if all(isinstance(v, Tensor) and v.shape == first.shape and torch.equal(v, first) for v in values):
            return first
        if all(isinstance(v, Tensor) and v.ndim and v.shape[0] == n and v.shape[1:] == first.shape[1:]
               for v, n in zip(values, sizes)):
            return torch.cat(values)
        raise _Unmergeable
    if isinstance(first, (tuple, list)):
        if any(not isinstance(v, type(first)) or len(v) != len(first) for v in values):
            raise _Unmergeable
        return type(first)(_merge_values([v[i] for v in values], sizes) for i in range(len(first)))
    if isinstance(first, dict):
        if any(not isinstance(v, dict) or v.keys() != first.keys() for v in values):
            raise _Unmergeable
        return {key: _merge_values([v[key] for v in values], sizes) for key in first}
    if any(v is not first and v != first for v in values):
        raise _Unmergeable
    return first


def quantize_in_one_pass(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                         run: BlockRunner) -> dict[str, nn.Module]:
    """True-sequential application in a single forward over all calibration samples at once
    (`inputs` merged into one batch): each selected linear is changed just before its first
    use, from the statistics of the input it is about to get, so the groups after it see its
    change, and the block's output is the changed block's. Stores that output in `inputs`."""
    chosen = {name: linear for name, linear in block.linears.items() if method.selects(name, linear)}
    replacements: dict[str, nn.Module] = {}
    shared: dict[int, tuple[Tensor, Any]] = {}  # id of an input -> (the input, kept alive; its statistics)
    done: set[str] = set()

    def change_before_use(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if name in done:
                return
            done.add(name)
            x = args[0]
            if method.input_only_stats and id(x) in shared:
                stats = shared[id(x)][1]
            else:
                stats = method.observe(method.init_stats(module), x.reshape(-1, x.shape[-1]))
                shared[id(x)] = (x, stats)
            new = method.apply(module, stats, name)
            if new is not None and new is not module:
                replacements.update(stand_in_for(model, block, {name: new}))

        return hook

    handles = [linear.register_forward_pre_hook(change_before_use(name)) for name, linear in chosen.items()]
    try:
        out = run(inputs, 0).to(run.offload)
    finally:
        for handle in handles:
            handle.remove()
    inputs.hidden[0] = out
    return replacements


def observe(method: LinearMethod, linears: dict[str, nn.Module], inputs: BlockInputs,
            run: BlockRunner) -> dict[str, Any]:
    """Statistics of each linear's inputs over all batches.

    Each pass stops as soon as every linear has had its input, so observing the first group
    of a block costs a fraction of a full pass. Linears fed the very same tensor (q, k and
    v; gate and up) share one statistic when the method says its statistics depend on the
    input alone."""
    stats = {name: method.init_stats(linear) for name, linear in linears.items()}
    fed: dict[int, tuple[Tensor, str]] = {}  # id of an input -> (the input, kept alive; first linear it fed)
    done: set[str] = set()  # linears that had their input, in this pass
    aliases: dict[str, str] = {}

    def hook(name: str) -> Callable:
        def observe_input(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            _, first = fed.setdefault(id(x), (x, name))  # holding x: its id is not reused this pass
            if method.input_only_stats and first != name:
                aliases[name] = first
            else:
                stats[name] = method.observe(stats[name], x.reshape(-1, x.shape[-1]))
            done.add(name)
            if len(done) == len(linears):
                raise _StopForward  # the rest of the block is not needed for these linears

        return observe_input

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        for index in range(len(inputs)):
            fed.clear()
            done.clear()
            with contextlib.suppress(_StopForward):
                run(inputs, index)
    finally:
        for handle in handles:
            handle.remove()
    for name, first in aliases.items():
        stats[name] = stats[first]
    return stats


@torch.no_grad()
def sequential(model: nn.Module, calib: Calibration, method: Method | None = None, *, batch_size: int = 1,
               device: torch.device | str | None = None, offload: torch.device | str = "cpu",
               progress: bool = True, on_block: Callable[[Block, list[Tensor]], None] | None = None,
               one_pass: bool = True) -> list[Tensor]:
    """Run `model` block by block over `calib`, applying `method` to each block.

    Returns the last block's outputs, one tensor per batch. `device` is where each block
    runs (its weights move there and back); activations wait on `offload`. `on_block` is
    called with each block and its outputs (after the method changed it). `one_pass`: a
    per-linear method runs each block over all batches at once (the fastest; it holds the
    whole calibration set's activations of one block): a true-sequential one in a single
    forward, changing each linear just before its first use, any other in one forward to
    observe and one for the outputs. Else per batch, once per group of linears.
    """
    with reuse_freed_memory():  # each block allocates the same large activations again
        return _sequential(model, calib, method, batch_size, device, offload, progress, on_block, one_pass)


def _sequential(model: nn.Module, calib: Calibration, method: Method | None, batch_size: int,
                device: torch.device | str | None, offload: torch.device | str, progress: bool,
                on_block: Callable[[Block, list[Tensor]], None] | None, one_pass: bool) -> list[Tensor]:
    batches = batches_of(calib, batch_size)
    parts = adapter(model)
    blocks = parts.blocks()
    inputs = capture(model, blocks[0].module, batches, offload)
    desc = f"{method.name} by block" if method else "blocks"
    for block in tqdm(blocks, desc=desc, disable=not progress):
        with _placed(block.module, device):
            run = BlockRunner(block.module, device or _home(block.module), offload)
            if isinstance(method, BlockMethod):  # before LinearMethod: a block method may take per-linear fields
                replacements = stand_in_for(model, block, method.apply_block(parts, block, inputs, run) or {})
                run.propagate(inputs)
            elif isinstance(method, LinearMethod):
                replacements = change_linears(method, model, block, inputs, run, one_pass)
            else:
                replacements = {}
                run.propagate(inputs)
            for name, new in replacements.items():
                replace_module(model, name, new)
        if on_block is not None:
            on_block(block, inputs.hidden)
    if isinstance(method, LinearMethod) and not isinstance(method, BlockMethod) and getattr(method, "head", False):
        quantize_head(method, model, inputs)
    return inputs.hidden


def change_linears(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                   run: BlockRunner, one_pass: bool) -> dict[str, nn.Module]:
    """Apply a per-linear method to `block` and store the changed block's outputs in `inputs`.

    With `one_pass` (and batches that can be merged) all batches run as one; a true-sequential
    method then needs a single forward. Returns the replacements still to put in place."""
    one_batch = merged(inputs) if one_pass else None
    if one_batch is None:
        replacements = observe_and_apply(method, model, block, inputs, run)
        run.propagate(inputs)
        return replacements
    if method.true_sequential:
        replacements = quantize_in_one_pass(method, model, block, one_batch, run)
    else:
        replacements = observe_and_apply(method, model, block, one_batch, run)
        run.propagate(one_batch)
    _split_like(inputs, one_batch.hidden[0])
    return replacements


def quantize_head(method: LinearMethod, model: nn.Module, inputs: BlockInputs) -> None:
    """Apply `method` to the output head, observing the final norm of the last block's outputs."""
    from tcompress.apply import head_of, replace_head

    name, head = head_of(model, method)
    if not method.selects(name, head):
        return
    norm, stats = adapter(model).final_norm(), method.init_stats(head)
    device = _home(head)
    for hidden in inputs.hidden:
        x = norm(hidden.to(device) if device is not None else hidden)
        stats = method.observe(stats, x.reshape(-1, x.shape[-1]))
    new = method.apply(head, stats, name)
    if new is not None and new is not head:
        replace_head(model, name, new)


def _split_like(inputs: BlockInputs, hidden: Tensor) -> BlockInputs:
    """`inputs` with its hidden states replaced by the slices of `hidden`, batch by batch."""
    inputs.hidden = list(hidden.split([h.shape[0] for h in inputs.hidden]))
    return inputs


def _home(module: nn.Module) -> torch.device | None:
    """Where a block's weights are; None where accelerate's hooks place them (meta)."""
    tensor = next(module.parameters(), None)
    return None if tensor is None or tensor.is_meta else tensor.device


@contextlib.contextmanager
def _placed(module: nn.Module, device: torch.device | str | None) -> Iterator[None]:
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
