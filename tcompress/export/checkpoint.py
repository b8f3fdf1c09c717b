"""Save a model as a Hugging Face folder plus `tcompress.json`, atomically.

The folder is written beside its destination under a hidden temporary name and renamed
into place only once complete, so a failed save never leaves a folder that loads, and an
earlier save at the same place survives until the new one is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.export.packed import packed_layouts

RECORD_FILE = "tcompress.json"
FORMAT_VERSION = 1


@dataclass
class Record:
    """What a model is and what was applied to it; saved as `tcompress.json`."""

    source: str
    applied: list[dict[str, Any]] = field(default_factory=list)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # packed modules' layouts, set on save
    format: int = FORMAT_VERSION

    @classmethod
    def read(cls, folder: Path) -> Record | None:
        path = Path(folder) / RECORD_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(source=data.get("source", str(folder)), applied=data.get("applied", []),
                   modules=data.get("modules", {}))


def record_of(model: nn.Module) -> Record:
    """The model's record, created empty for a model tcompress did not load."""
    record = getattr(model, "tc_record", None)
    if record is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        record = Record(source=str(source))
        model.tc_record = record
    return record


def drop_gguf_marker(model: nn.Module) -> None:
    """Forget that weights came from a GGUF file: they are dequantized floats by now.

    transformers keeps a `gguf` quantization marker on such a model and then refuses to
    `save_pretrained` it; the weights themselves are ordinary tensors.
    """
    config = getattr(model, "config", None)
    marker = getattr(config, "quantization_config", None)
    method = marker.get("quant_method") if isinstance(marker, dict) else getattr(marker, "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        return
    del config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def save(model: nn.Module, folder: str | os.PathLike, processor: Any = None) -> Path:
    """Write `model` (and its tokenizer or image processor) to `folder`, atomically.

    `processor` defaults to the one `tc.load` attached to the model. `tc.load(folder)`
    gives both back, with the record of what was applied.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"cannot save to {str(folder)!r}: it is a file, expected a folder path")
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"save expects a Hugging Face model (with save_pretrained), got {type(model).__name__}")
    processor = processor if processor is not None else getattr(model, "tc_processor", None)
    drop_gguf_marker(model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        layouts = packed_layouts(model)
        # packed models load through tc.load, by their module names as they are in memory (a
        # family transformers renames on save, e.g. ViT, would not match its layouts otherwise)
        model.save_pretrained(tmp, safe_serialization=True, save_original_format=not layouts)
        if processor is not None:
            processor.save_pretrained(tmp)
        record = replace(record_of(model), modules=layouts)
        (tmp / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")
        _replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _replace(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` to `folder`, replacing an earlier save only at the end."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
