"""The layer-wise engine: run a model block by block over calibration data.

It captures what the first block receives (`inputs.py`), then for each block in order: a method observes the
inputs of the linears it changes and updates the block; the block runs again and its
outputs, computed after the update, become the next block's inputs. Only one block's
activations are held at a time (kept on `offload`, default CPU, while the block itself
may run on another device), so each block is compressed on the outputs of the already
compressed blocks before it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Protocol

import torch
from greenlet import greenlet
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.checkpoint.lazy import streamed
from tcompress.core.memory import reuse_freed_memory
from tcompress.core.modules import linear_weight, replace_module
from tcompress.engine.inputs import (
    BlockInputs,
    BlockRunner,
    Calibration,
    StopForward,
    batches_of,
    capture,
    chunked,
    home,
    placed,
    sizes_of,
    split,
)
from tcompress.engine.method import BlockMethod, LinearMethod, Method
from tcompress.engine.parallel import Combine, combiner, share, world
from tcompress.engine.peak import linear_shape
from tcompress.engine.targets import head_of, replace_head
from tcompress.models.adapters import Adapter, Block, adapter

CHUNK_TOKENS = 16384  # calibration tokens a block runs over at once: 32 samples of 512 (see calibration_memory.py)


class Statistics(Protocol):
    """What `observe` gathers per linear: a `LinearMethod`, or a block method's own statistic."""

    input_only_stats: bool  # the statistic is the input's alone: linears fed one tensor share it

    def init_stats(self, linear: nn.Module) -> Any: ...

    def observe(self, stats: Any, x: Tensor) -> Any: ...


def observe_and_apply(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                      run: BlockRunner, combine: Combine | None = None) -> dict[str, nn.Module]:
    """Hand each selected linear's inputs to the method, then let it change the linear.

    Returns the replacement modules (e.g. packed ones) to put in place once the block is
    done; until then each replaced linear computes with its replacement's weight."""
    groups = block.groups() if method.true_sequential else [block.linears]
    replacements = {}
    for group in groups:
        chosen = {name: linear for name, linear in group.items() if method.selects(name, linear)}
        if not chosen:
            continue
        stats = observe(method, chosen, inputs, run, combine)
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


class ByInput:
    """Values keyed by an input tensor itself, without keeping it alive: an entry lapses when
    the model frees its tensor (so a block's large activations go as soon as they are used)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, x: Tensor) -> Any:
        ref, value = self.entries.get(id(x), (None, None))
        return value if ref is not None and ref() is x else None

    def put(self, x: Tensor, value: Any) -> None:
        self.entries[id(x)] = (weakref.ref(x), value)

    def clear(self) -> None:
        self.entries.clear()


def quantize_in_one_pass(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                         run: BlockRunner, combine: Combine | None = None) -> dict[str, nn.Module]:
    """True-sequential application in a single forward: each selected linear is changed just
    before its first use, from the statistics of the input it is about to get over every
    batch, so the groups after it see its change, and the block's output is the changed
    block's. Stores that output in `inputs`.

    Each batch runs the block as a coroutine of its own (a greenlet, on this thread). At a
    linear still to change, the batch hands its input over and waits; once every batch has,
    the linear changes and the batches go on, one at a time, to the next. So the block runs
    once, yet only one batch's transient activations (attention scores, the MLP's wide
    intermediates) are alive at a time: the others hold only what their forward keeps."""
    chosen = {name: linear for name, linear in block.linears.items() if method.selects(name, linear)}
    replacements: dict[str, nn.Module] = {}
    stats: dict[str, Any] = {}
    fed = ByInput()  # the first linear each input fed: linears fed the very same tensor share its statistics
    hub = greenlet.getcurrent()

    def change(name: str, module: nn.Module, with_stats: Any) -> None:
        new = method.apply(module, with_stats, name)
        if new is not None and new is not module:
            replacements.update(stand_in_for(model, block, {name: new}))
        stats[name] = with_stats

    def change_before_use(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if name in stats:
                return
            x = args[0]
            first = fed.get(x) if method.input_only_stats else None
            if first is not None and first in stats:
                change(name, module, stats[first])
                return
            fed.put(x, name)
            hub.switch(name, x)  # wait until every batch has observed this linear and it has changed

        return hook

    handles = [linear.register_forward_pre_hook(change_before_use(name)) for name, linear in chosen.items()]
    try:
        batches = [greenlet(run) for _ in range(len(inputs))]
        events = [batch.switch(inputs, index) for index, batch in enumerate(batches)]
        while not all(batch.dead for batch in batches):
            reached = {"the block's end" if batch.dead else event[0] for batch, event in zip(batches, events)}
            if len(reached) != 1:
                raise RuntimeError(f"the block's batches reached different places ({sorted(reached)}): "
                                   "run it with one_pass=False")
            name = reached.pop()
            place_done(model, chosen, replacements)  # every batch is past them: their floats can go
            observed = method.init_stats(chosen[name])
            for _, x in events:
                observed = method.observe(observed, x.reshape(-1, x.shape[-1]))
            change(name, chosen[name], combine(observed) if combine else observed)
            events = [batch.switch() for batch in batches]
        outputs = [out.to(run.offload) for out in events]
    finally:
        for handle in handles:
            handle.remove()
    inputs.hidden = outputs
    return replacements


def place_done(model: nn.Module, linears: dict[str, nn.Module], replacements: dict[str, nn.Module]) -> None:
    """Put in place the replacements of linears no batch will run again in this forward, and
    free their float weights (a 1.7B model's block holds 200 MB of them while its last linear changes)."""
    for name in list(replacements):
        replace_module(model, name, replacements.pop(name))
        linears[name].weight = nn.Parameter(linears[name].weight.new_empty(0), requires_grad=False)


def observe(method: Statistics, linears: dict[str, nn.Module], inputs: BlockInputs,
            run: BlockRunner, combine: Combine | None = None) -> dict[str, Any]:
    """Statistics of each linear's inputs over all batches.

    Each pass stops as soon as every linear has had its input, so observing the first group
    of a block costs a fraction of a full pass. Linears fed the very same tensor (q, k and
    v; gate and up) share one statistic when the method says its statistics depend on the
    input alone. `combine` joins each statistic with the other processes' (data-parallel runs)."""
    stats = {name: method.init_stats(linear) for name, linear in linears.items()}
    fed = ByInput()  # the first linear each input fed, in this pass
    done: set[str] = set()  # linears that had their input, in this pass
    aliases: dict[str, str] = {}

    def hook(name: str) -> Callable:
        def observe_input(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            first = fed.get(x)
            if first is None:
                fed.put(x, first := name)
            if method.input_only_stats and first != name:
                aliases[name] = first
            else:
                stats[name] = method.observe(stats[name], x.reshape(-1, x.shape[-1]))
            done.add(name)
            if len(done) == len(linears):
                raise StopForward  # the rest of the block is not needed for these linears

        return observe_input

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        for index in range(len(inputs)):
            fed.clear()
            done.clear()
            with contextlib.suppress(StopForward):
                run(inputs, index)
    finally:
        for handle in handles:
            handle.remove()
    if combine is not None:
        stats.update({name: combine(value) for name, value in stats.items() if name not in aliases})
    for name, first in aliases.items():
        stats[name] = stats[first]
    return stats


@torch.no_grad()
def sequential(model: nn.Module, calib: Calibration, method: Method | None = None, *, batch_size: int = 1,
               device: torch.device | str | None = None, offload: torch.device | str = "cpu",
               progress: bool = True, on_block: Callable[[Block, list[Tensor]], None] | None = None,
               one_pass: bool = True, chunk_tokens: int = CHUNK_TOKENS) -> list[Tensor]:
    """Run `model` block by block over `calib`, applying `method` to each block.

    Returns the last block's outputs, one tensor per batch. `device` is where each block
    runs (its weights move there and back); activations wait on `offload`. `on_block` is
    called with each block and its outputs (after the method changed it). `one_pass`: a
    per-linear method runs each block over the batches joined into chunks of about
    `chunk_tokens` tokens (the fastest; larger chunks hold more activations at a time): a
    true-sequential one in a single forward, changing each linear just before its first use,
    any other in one forward to observe and one for the outputs. Else per batch, once per
    group of linears. Launched as several processes (`accelerate launch`), a per-linear method
    runs each process's share of the batches and sums the statistics (`engine/parallel.py`);
    the outputs returned are then this process's share.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    with reuse_freed_memory() if reuse_pays(model) else contextlib.nullcontext():
        return _sequential(model, calib, method, batch_size, device, offload, progress, on_block, one_pass,
                           chunk_tokens)


def reuse_pays(model: nn.Module, limit: int = 64 * 2**20) -> bool:
    """Whether to keep freed memory for reuse: it spares the page faults of the same large
    activations allocated again and again, but where a layer's own matrices (the Gram matrix of
    an input `limit` bytes or more in float32) are that large too, a heap that keeps what is
    freed fragments (GPTQ on a 1.7B model's 8,192-wide inputs peaked at 4.0 GB with it, 2.3 GB
    without)."""
    parts = adapter(model)
    blocks = parts.blocks()[:1] if parts.blocks_name else []
    widest = max((linear_shape(linear)[1] for block in blocks for linear in block.linears.values()), default=0)
    return 4 * widest**2 < limit


def _sequential(model: nn.Module, calib: Calibration, method: Method | None, batch_size: int,
                device: torch.device | str | None, offload: torch.device | str, progress: bool,
                on_block: Callable[[Block, list[Tensor]], None] | None, one_pass: bool,
                chunk_tokens: int) -> list[Tensor]:
    batches = batches_of(calib, batch_size)
    rank, processes = world()
    parallel = processes > 1 and isinstance(method, LinearMethod)  # a block method runs every batch everywhere
    if parallel:
        batches = share(batches, rank, processes)
    combine = combiner(method.stats_reduction) if parallel else None
    parts = adapter(model)
    blocks = parts.blocks()
    captured = capture(model, model.get_submodule(parts.blocks_name) if parts.blocks_name else [model], batches,
                       offload)
    desc = f"{method.name} by block" if method else "blocks"
    with tqdm(total=len(blocks), desc=desc, disable=not progress or rank != 0) as bar:
        while blocks:  # each Block goes once done, and with it the linears its method replaced
            one_block(model, parts, blocks.pop(0), captured, method, device, offload, one_pass, chunk_tokens,
                      on_block, combine)
            bar.update()
    if isinstance(method, LinearMethod) and method.head:
        quantize_head(method, model, captured, combine)
    return captured.hidden


def one_block(model: nn.Module, parts: Adapter, block: Block, captured: BlockInputs, method: Method | None,
              device: torch.device | str | None, offload: torch.device | str, one_pass: bool, chunk_tokens: int,
              on_block: Callable[[Block, list[Tensor]], None] | None, combine: Combine | None = None) -> None:
    """Apply `method` to `block` and leave its outputs in `captured`, as the next block's inputs."""
    inputs = captured.at(block.index)
    with streamed(model, block.name):  # a lazily loaded model's block holds its weights only here
        with placed(block.module, device):
            run = BlockRunner(block.module, device or home(block.module), offload)
            if isinstance(method, LinearMethod):
                replacements = change_linears(method, model, block, inputs, run, one_pass, chunk_tokens, combine)
            elif isinstance(method, BlockMethod):
                replacements = stand_in_for(model, block, method.apply_block(parts, block, inputs, run) or {})
                run.propagate(inputs)
            else:
                replacements = {}
                run.propagate(inputs)
            for name, new in replacements.items():
                replace_module(model, name, new)
        captured.hidden = inputs.hidden
        if on_block is not None:
            on_block(block, inputs.hidden)


def change_linears(method: LinearMethod, model: nn.Module, block: Block, inputs: BlockInputs,
                   run: BlockRunner, one_pass: bool, chunk_tokens: int,
                   combine: Combine | None = None) -> dict[str, nn.Module]:
    """Apply a per-linear method to `block` and store the changed block's outputs in `inputs`.

    With `one_pass` (and batches that can be joined) the batches run in chunks of about
    `chunk_tokens` tokens; a true-sequential method then needs a single forward. Returns the
    replacements still to put in place."""
    chunks = chunked(inputs, chunk_tokens) if one_pass else None
    if chunks is None:
        replacements = observe_and_apply(method, model, block, inputs, run, combine)
        run.propagate(inputs)
        return replacements
    sizes = sizes_of(inputs)
    inputs.hidden.clear()  # the chunks hold the same states: the batches' own copies go
    if method.true_sequential:
        replacements = quantize_in_one_pass(method, model, block, chunks, run, combine)
    else:
        replacements = observe_and_apply(method, model, block, chunks, run, combine)
        run.propagate(chunks)
    inputs.hidden.extend(split(chunks.hidden, sizes))
    return replacements


def quantize_head(method: LinearMethod, model: nn.Module, inputs: BlockInputs, combine: Combine | None = None) -> None:
    """Apply `method` to the output head, observing the final norm of the last block's outputs."""
    name, head = head_of(model, method)
    if not method.selects(name, head):
        return
    norm, stats = adapter(model).final_norm(), method.init_stats(head)
    device = home(head)
    for hidden in inputs.hidden:
        x = norm(hidden.to(device) if device is not None else hidden)
        stats = method.observe(stats, x.reshape(-1, x.shape[-1]))
    new = method.apply(head, combine(stats) if combine else stats, name)
    if new is not None and new is not head:
        replace_head(model, name, new)


