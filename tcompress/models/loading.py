"""`tc.load(spec)`: a model and its tokenizer or image processor, from anything a user has.

`spec` is a named offline model (`default`, `smollm2-135m`, `minilm`), a Hugging Face
folder (ours, with `tcompress.json`, or any other), a `.gguf` file, or a hub id. GGUF
weights are dequantized by transformers; the named GGUF model is converted once and
cached as an ordinary folder, so later loads take a second.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcompress.export.checkpoint import Record, drop_gguf_marker, save
from tcompress.export.packed import load_packed
from tcompress.models import named

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")


class ModelSpecError(ValueError):
    """The model spec names nothing loadable."""


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is not one transformers (or tcompress) can build."""


def load(spec: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
         device_map: str | dict | None = None, processor: bool = True) -> tuple[nn.Module, Any]:
    """Load a model and its tokenizer (or image processor; None if it has neither).

    `dtype` is the floating-point type of the weights ("auto" keeps the checkpoint's);
    `device_map` is passed to transformers (e.g. "auto" to offload with accelerate);
    `processor=False` skips the tokenizer (None is returned), for serving token ids: a
    tokenizer can take more memory than a 4-bit model's linears.
    The model is returned in eval mode.
    """
    with_processor, processor = processor, None  # the flag; then what is loaded
    key = str(spec)
    if key in named.NAMED:
        model, processor = _load_named(key, dtype, device_map, with_processor)
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file not found: {str(path)!r}")
            model, processor = _load_gguf(path, dtype, with_processor)
        elif path.is_dir():
            model, processor = _load_folder(path, dtype, device_map, with_processor)
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


def _load_named(name: str, dtype, device_map, with_processor: bool = True) -> tuple[nn.Module, Any]:
    path = named.locate(name)
    if path.is_dir():
        model, processor = _load_folder(path, dtype, device_map, with_processor)
    else:
        cache = named.cache_root() / f"{named.NAMED[name].package}-{named.version(name)}"
        if not (cache / "config.json").is_file():
            log.info("converting %s to a cached folder at %s (once)", path.name, cache)
            model, processor = _load_gguf(path, torch.float32)
            save(model, cache, processor)
        model, processor = _load_folder(cache, dtype, device_map, with_processor)
    model.tc_record = Record(source=name)
    return model, processor


def _load_gguf(path: Path, dtype, with_processor: bool = True) -> tuple[nn.Module, Any]:
    import transformers

    try:
        processor = (transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                     if with_processor else None)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, IndexError, EOFError) as error:
        raise UnsupportedArchitectureError(f"cannot read GGUF file {str(path)!r} (corrupted, truncated, or of an "
                                           f"architecture transformers cannot build): {error}") from error
    drop_gguf_marker(model)
    model.tc_record = Record(source=str(path))
    return model, processor


def _load_folder(source: str | Path, dtype, device_map, with_processor: bool = True) -> tuple[nn.Module, Any]:
    import transformers  # here, not at import: tcompress's runtime imports without it

    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except ValueError as error:
        raise UnsupportedArchitectureError(f"cannot read the config of {str(source)!r}: {error}") from error
    except OSError as error:
        raise ModelSpecError(f"cannot load {str(source)!r}: not a model folder, and the hub said: {error}") from error
    model_class = _model_class(config)
    record = Record.read(Path(source)) if Path(source).is_dir() else None
    if record is not None and record.modules:
        model = load_packed(model_class, config, Path(source), record.modules, dtype)
    else:
        model = model_class.from_pretrained(source, config=config, dtype=dtype, device_map=device_map)
    drop_gguf_marker(model)
    model.tc_record = record or Record(source=str(source))
    return model, _load_processor(source) if with_processor else None


def _model_class(config) -> type:
    """The transformers class named by the config, else the causal-LM or base auto class."""
    import transformers

    for architecture in config.architectures or ():
        model_class = getattr(transformers, architecture, None)
        if model_class is None:
            raise UnsupportedArchitectureError(
                f"architecture {architecture!r} is not in transformers {transformers.__version__}"
            )
        return model_class
    causal = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING
    return transformers.AutoModelForCausalLM if type(config) in causal else transformers.AutoModel


def _load_processor(source: str | Path) -> Any:
    """The tokenizer, else the image processor, else None."""
    import transformers

    folder = Path(source)
    if folder.is_dir():
        if any((folder / name).exists() for name in TOKENIZER_FILES):
            return transformers.AutoTokenizer.from_pretrained(folder)
        if (folder / "preprocessor_config.json").exists():
            return transformers.AutoImageProcessor.from_pretrained(folder)
        return None
    for auto in (transformers.AutoTokenizer, transformers.AutoImageProcessor):
        try:
            return auto.from_pretrained(source)
        except (OSError, ValueError):
            continue
    return None
