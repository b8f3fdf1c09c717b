"""`tc.load(spec)`: a model and its tokenizer or image processor, from anything a user has.

`spec` is a named offline model (`default`, `smollm2-135m`, `minilm`, `vit-fmnist`), a
Hugging Face folder (ours, with `tcompress.json`, or any other), a `.gguf` file, or a hub id.
GGUF weights are dequantized by transformers; the named GGUF model is converted once and
cached as an ordinary folder, so later loads take a second. A folder saved with packed
modules is rebuilt with them in place (`load_packed`): a 4-bit model stays 4-bit in memory.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn

from tcompress.checkpoint.integrity import CheckpointError, check_weight_files, verify_digests
from tcompress.checkpoint.lazy import load_lazy
from tcompress.checkpoint.record import Record
from tcompress.checkpoint.save import save
from tcompress.core.cache import cache_root
from tcompress.core.modules import replace_module
from tcompress.models import named
from tcompress.models.loading import ModelSpecError, model_class, read_config, read_float, read_gguf, read_processor
from tcompress.packed.registry import format_class

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load(spec: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
         device_map: str | dict | None = None, processor: bool = True, verify: bool = False,
         lazy: bool = False, spool: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """Load a model and its tokenizer (or image processor; None if it has neither).

    `dtype` is the floating-point type of the weights ("auto" keeps the checkpoint's);
    `device_map` is passed to transformers (e.g. "auto" to offload with accelerate);
    `processor=False` skips the tokenizer (None is returned), for serving token ids: a
    tokenizer can take more memory than a 4-bit model's linears; `verify=True` first checks
    every file of a saved folder against the sha256 `tc.save` recorded. A folder that cannot
    be loaded as it is (missing, truncated or corrupted files, a config that does not match
    its tensors) raises a `CheckpointError` naming the file. The model is returned in eval mode.

    `lazy=True` builds the model without its blocks' weights, which the layer-wise engine
    (`tc.apply`) then reads from the safetensors files one block at a time; each block's
    result waits in `spool` (default: a folder in the tcompress cache) until `tc.save`
    writes the model shard by shard. So a model larger than memory compresses in about one
    block's memory. Evaluating or distilling such a model needs it saved and loaded again.
    """
    with_processor, processor = processor, None  # the flag; then what is loaded
    key = str(spec)
    if lazy:
        model, processor = _load_lazy(key, dtype, device_map, with_processor, spool)
        model.eval()
        model.tc_processor = processor
        return model, processor
    if key in named.NAMED:
        model, processor = _load_named(key, dtype, device_map, with_processor)
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file not found: {str(path)!r}")
            model, processor = read_gguf(path, dtype, with_processor)
            model.tc_record = Record(source=str(path))
        elif path.is_dir():
            model, processor = _load_folder(path, dtype, device_map, with_processor, verify)
        elif path.exists():
            raise ModelSpecError(f"model spec {key!r} is a file but not a .gguf file; expected a folder or .gguf")
        elif HUB_ID.match(key):
            model, processor = _load_folder(key, dtype, device_map, with_processor)
        else:
            raise ModelSpecError(
                f"unknown model spec {key!r}: expected a named model ({', '.join(named.NAMED)}), "
                "a Hugging Face folder, a .gguf file, or a hub id 'org/name'"
            )
    model.eval()
    model.tc_processor = processor
    return model, processor


def empty_model(spec: str | os.PathLike) -> nn.Module | None:
    """The model `spec` names, built on the meta device from its config alone (no weight
    read), for estimates before loading; None where only loading tells (a GGUF file, a
    folder of packed modules)."""
    key = str(spec)
    if key in named.NAMED:
        source: str | Path = named_folder(key)
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            return None
        source = path if path.is_dir() else key
    if Path(source).is_dir():
        record = Record.read(Path(source))
        if record is not None and record.modules:
            return None
    config = read_config(source)
    with init_empty_weights(include_buffers=False):
        model = model_class(config)._from_config(config, dtype=torch.float32)
    model.tie_weights()  # a tied head is the embeddings' tensor, counted once
    return model


def _load_lazy(spec: str, dtype, device_map, with_processor: bool, spool) -> tuple[nn.Module, Any]:
    """A float safetensors checkpoint (a named model, a folder, a hub id) built by `load_lazy`."""
    if device_map is not None:
        raise ValueError("lazy=True places each block itself: give no device_map")
    if spec in named.NAMED:
        folder = named_folder(spec)
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
    elif Path(spec).suffix == ".gguf" or Path(spec).expanduser().exists():
        raise ModelSpecError(f"lazy=True reads safetensors folders; {spec!r} is a file: convert it first (tc.load, "
                             "then tc.save)")
    elif HUB_ID.match(spec):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    else:
        raise ModelSpecError(f"unknown model spec {spec!r}: expected a named model ({', '.join(named.NAMED)}), "
                             "a Hugging Face folder, or a hub id 'org/name'")
    record = Record.read(folder)
    if record is not None and record.modules:
        raise ModelSpecError(f"{str(folder)!r} holds packed modules, which load whole in little memory: load it "
                             "without lazy=True")
    config = read_config(folder)
    model = load_lazy(model_class(config), config, folder, dtype, spool)
    model.tc_record = Record(source=spec) if spec in named.NAMED or record is None else record
    return model, read_processor(folder) if with_processor else None


def _load_named(name: str, dtype, device_map, with_processor: bool = True) -> tuple[nn.Module, Any]:
    model, processor = _load_folder(named_folder(name), dtype, device_map, with_processor)
    model.tc_record = Record(source=name)
    return model, processor


def named_folder(name: str) -> Path:
    """The Hugging Face folder of the named model `name`: the one it ships, or, for a GGUF
    file, the folder it is converted to once (in the tcompress cache)."""
    path = named.locate(name)
    if path.is_dir():
        return path
    cache = cache_root() / f"{named.NAMED[name].package}-{named.version(name)}"
    if not (cache / "config.json").is_file():
        log.info("converting %s to a cached folder at %s (once)", path.name, cache)
        model, processor = read_gguf(path, torch.float32)
        model.tc_record = Record(source=str(path))
        save(model, cache, processor)
    return cache


def local_folder(spec: str | os.PathLike) -> Path:
    """The folder on this machine that holds the model `spec`: a named model's (converted
    once if needed) or the folder itself, for readers of the files (the lean decoder)."""
    if str(spec) in named.NAMED:
        return named_folder(str(spec))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelSpecError(f"model {str(spec)!r}: expected a named model ({', '.join(named.NAMED)}) or a saved "
                             "model folder")
    return path


def _load_folder(source: str | Path, dtype, device_map, with_processor: bool = True,
                 verify: bool = False) -> tuple[nn.Module, Any]:
    local = Path(source).is_dir()
    record = Record.read(Path(source)) if local else None
    if verify:
        if record is None:
            raise CheckpointError(f"{str(source)!r}: no tcompress.json, so no recorded digests to verify against")
        verify_digests(Path(source), record.files)
    config = read_config(source)
    cls = model_class(config)
    if local:
        check_weight_files(Path(source), safetensors_only=bool(record and record.modules))
    if record is not None and record.modules:
        model = load_packed(cls, config, Path(source), record.modules, dtype)
    else:
        model = read_float(source, config, dtype, device_map)
    model.tc_record = record or Record(source=str(source))
    return model, read_processor(source) if with_processor else None


SHAPE_FIELDS = ("in_features", "out_features", "num_embeddings", "embedding_dim")


def built_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module the config built at `name`, or None where it built none (an input quantizer slot)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def check_fits(folder: Path, name: str, built: nn.Module | None, packed: nn.Module) -> None:
    """Refuse a packed module whose shape differs from the one the config builds in its place."""
    for field in SHAPE_FIELDS:
        if hasattr(built, field) and hasattr(packed, field) and getattr(built, field) != getattr(packed, field):
            raise CheckpointError(f"{str(folder)!r}: {name} has {field}={getattr(packed, field)} in tcompress.json but "
                                  f"{getattr(built, field)} by config.json: the two do not describe one model")


def load_packed(cls: type, config, folder: Path, layouts: dict[str, dict], dtype: torch.dtype) -> nn.Module:
    """Build `cls` from `config` with the packed modules of `layouts`, then load the folder's
    tensors into it (nothing is initialised twice, nothing unpacked)."""
    dtype = config.dtype if dtype == "auto" else dtype
    with init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=dtype)
    classes = set()
    for name, layout in layouts.items():
        try:
            packed = format_class(layout.get("format"))
        except ValueError as error:
            raise CheckpointError(f"{str(folder)!r}: module {name!r}: {error}") from None
        classes.add(packed)
        with init_empty_weights(include_buffers=True):  # the codes come from the files: no buffer allocated twice
            new = packed.from_layout(layout, dtype)
        check_fits(folder, name, built_module(model, name), new)
        replace_module(model, name, new)
    state = {}
    for file in check_weight_files(folder):
        state.update(load_file(file))
    expected = {name: tuple(t.shape) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # shapes the config does not give
        raise CheckpointError(f"{str(folder)!r}: its tensors do not fit its config.json and tcompress.json: "
                              f"{str(error).splitlines()[-1].strip()}") from None
    loaded = {name: tuple(t.shape) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    misfits = [f"{name} {loaded[name]} for {shape}" for name, shape in expected.items()
               if name in loaded and loaded[name] != shape]
    if misfits:
        raise CheckpointError(f"{str(folder)!r}: tensors of other shapes than config.json and tcompress.json give: "
                              f"{', '.join(misfits[:3])}")
    model.tie_weights()
    for packed in classes:
        if hasattr(packed, "after_load"):
            packed.after_load(model)
    still_empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if result.unexpected_keys or still_empty:
        raise CheckpointError(f"{str(folder)!r} does not match its tcompress.json: unexpected "
                         f"{result.unexpected_keys[:5]}, missing {still_empty[:5]}")
    return model
