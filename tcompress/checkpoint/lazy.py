"""Models larger than memory: built empty, each block's weights read only while it is worked on.

`load_lazy` builds the model on the meta device with everything outside its blocks (the
embeddings, final norm, head) read from the safetensors files; the layer-wise engine then
enters each block through `streamed`: the block's tensors are read from the files (memory
mapped, one block at a time), the method changes it, and on leaving, the result (packed
modules or changed floats) is written to a spool folder and the block is emptied again.
`write_sharded` (what `tc.save` does for such a model) writes one shard a block from the
spool, or from the source for a block no method touched, plus one shard for the rest and
the `model.safetensors.index.json` that transformers reads. So the peak memory is the
non-block weights, one block and its activations, whatever the model's size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tcompress.checkpoint.integrity import CheckpointError, check_weight_files
from tcompress.core.cache import cache_root
from tcompress.core.memory import release_freed_memory
from tcompress.models.adapters import adapter

INDEX_FILE = "model.safetensors.index.json"


@dataclass
class LazyWeights:
    """Where a lazily loaded model's tensors are: the source files, and the spooled blocks."""

    source: Path
    files: dict[str, Path]  # tensor name -> the source file holding it
    blocks: list[str]  # the blocks' module names, in order
    dtype: torch.dtype
    spool: Path  # finished blocks, one safetensors file each, until the model is saved
    spooled: dict[str, tuple[list[str], int]] = field(default_factory=dict)  # block -> (tensor names, bytes)

    def spool_file(self, block: str) -> Path:
        return self.spool / f"{block}.safetensors"

    def names_of(self, block: str) -> list[str]:
        return [name for name in self.files if name.startswith(block + ".")]


class LazyModelError(ValueError):
    """A lazily loaded model asked for what needs all of its weights in memory at once."""


def lazy_of(model: nn.Module) -> LazyWeights | None:
    """The lazy weights of a model `load_lazy` built, else None."""
    return getattr(model, "tc_lazy", None)


def require_materialized(model: nn.Module, what: str) -> None:
    """Refuse `what` (evaluation, distillation, a whole-model method) on a lazily loaded model."""
    if lazy_of(model) is not None:
        raise LazyModelError(f"{what} needs the whole model in memory, but it was loaded with lazy=True (only one "
                             "block at a time is): save it and load the result, or load it without lazy")


def source_tensors(folder: Path) -> dict[str, Path]:
    """Every tensor name of a safetensors checkpoint, with the file holding it."""
    files = {}
    for path in check_weight_files(folder):
        with safe_open(path, framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), path))
    return files


def read_tensors(files: dict[str, Path], names: list[str], dtype: torch.dtype, strip: str = "") -> dict[str, Tensor]:
    """The tensors `names` from their files (memory-mapped), floats cast to `dtype`."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    state = {}
    for path, in_file in by_file.items():
        with safe_open(path, framework="pt") as handle:
            for name in in_file:
                tensor = handle.get_tensor(name)
                state[name[len(strip):]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def load_lazy(cls: type, config, folder: Path, dtype: torch.dtype, spool: Path | None = None) -> nn.Module:
    """`cls` built from `config` on the meta device, with every tensor outside its blocks
    read from `folder`; the blocks stay empty until `streamed` enters them."""
    dtype = config.dtype if dtype == "auto" else dtype
    with init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=dtype)
    parts = adapter(model)
    if parts.blocks_name is None:
        raise LazyModelError(f"{str(folder)!r}: lazy loading streams a model's blocks, and no block list was found in "
                             f"{type(model).__name__}")
    blocks = [block.name for block in parts.blocks()]
    files = source_tensors(folder)
    in_blocks = tuple(name + "." for name in blocks)
    rest = [name for name in files if not name.startswith(in_blocks)]
    state = read_tensors(files, rest, dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if result.unexpected_keys:
        raise CheckpointError(f"{str(folder)!r}: tensors the model does not have: {result.unexpected_keys[:5]}")
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_meta and not name.startswith(in_blocks)]
    if empty:
        raise CheckpointError(f"{str(folder)!r}: weights missing from the files: {empty[:5]}")
    spool = Path(tempfile.mkdtemp(prefix="spool-", dir=_spool_root(spool)))
    model.tc_lazy = LazyWeights(folder, files, blocks, dtype, spool)
    weakref.finalize(model, shutil.rmtree, spool, True)
    return model


def _spool_root(spool: Path | None) -> Path:
    root = Path(spool) if spool is not None else cache_root() / "spool"  # on disk: /tmp may be memory
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def streamed(model: nn.Module, block: str) -> Iterator[None]:
    """Inside, the block named `block` holds its weights (read from the spool or the source);
    on leaving, they are spooled and the block is emptied. Nothing happens for a model in memory."""
    lazy = lazy_of(model)
    if lazy is None:
        yield
        return
    module = model.get_submodule(block)
    module.load_state_dict(block_state(lazy, block, strip=True), strict=True, assign=True)
    try:
        yield
        block_module = model.get_submodule(block)  # a method may have replaced parts of it
        spool_block(lazy, block, block_module)
    finally:
        empty(model.get_submodule(block))
        release_freed_memory()  # the block's tensors, and what its method worked in, leave no resident pages


def block_state(lazy: LazyWeights, block: str, strip: bool = False) -> dict[str, Tensor]:
    """The tensors of `block` as they stand: its spooled result, else the source's."""
    prefix = block + "." if strip else ""
    if block in lazy.spooled:
        state = load_file(lazy.spool_file(block))
        return {name[len(prefix):]: tensor for name, tensor in state.items()}
    names = lazy.names_of(block)
    if not names:
        raise CheckpointError(f"{str(lazy.source)!r}: no tensors for block {block!r} in the files")
    return read_tensors(lazy.files, names, lazy.dtype, strip=prefix)


def spool_block(lazy: LazyWeights, block: str, module: nn.Module) -> None:
    state = {f"{block}.{name}": tensor.contiguous() for name, tensor in module.state_dict().items()}
    path = lazy.spool_file(block)
    tmp = path.with_suffix(".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    lazy.spooled[block] = (list(state), nbytes(state))


def empty(module: nn.Module) -> None:
    """Give every parameter and persistent buffer of `module` back to the meta device (its memory freed)."""
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and not param.is_meta:
                sub._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None and not buffer.is_meta and name not in sub._non_persistent_buffers_set:
                sub._buffers[name] = buffer.to("meta")


def write_sharded(model: nn.Module, folder: Path) -> None:
    """Write a lazily loaded model's weights to `folder`: a shard a block, one for the rest, and the index."""
    lazy = lazy_of(model)
    folder.mkdir(parents=True, exist_ok=True)
    count = len(lazy.blocks) + 1
    names = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    weight_map: dict[str, str] = {}
    total = 0
    for block, name in zip(lazy.blocks, names):
        if block in lazy.spooled:
            _link_or_copy(lazy.spool_file(block), folder / name)
            keys, size = lazy.spooled[block]
        else:
            state = block_state(lazy, block)
            save_file(state, folder / name, metadata={"format": "pt"})
            keys, size = list(state), nbytes(state)
            del state
        weight_map.update(dict.fromkeys(keys, name))
        total += size
    rest = outside_blocks(model, lazy.blocks)
    save_file(rest, folder / names[-1], metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, names[-1]))
    total += nbytes(rest)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)


def outside_blocks(model: nn.Module, blocks: list[str]) -> dict[str, Tensor]:
    """The model's tensors outside its blocks (whose modules are never asked), each stored
    once: a tied head is the embeddings'."""
    in_blocks = tuple(name + "." for name in blocks)
    state: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if name in blocks or name.startswith(in_blocks):
            continue
        module._save_to_state_dict(state, f"{name}." if name else "", keep_vars=False)  # its own tensors only
    unique, seen = {}, set()
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.contiguous()
    return unique


def nbytes(state: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the spool and the output on one file system: no copy
    except OSError:
        shutil.copyfile(source, target)
