"""Save a model as a Hugging Face folder plus `tcompress.json`, atomically.

The folder is written beside its destination under a hidden temporary name and renamed
into place only once complete, so a failed save never leaves a folder that loads, and an
earlier save at the same place survives until the new one is whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.checkpoint.integrity import file_digests
from tcompress.checkpoint.lazy import lazy_of, write_sharded
from tcompress.checkpoint.record import RECORD_FILE, record_of
from tcompress.core.files import written_atomically
from tcompress.core.sizes import folder_bytes
from tcompress.models.loading import drop_gguf_marker
from tcompress.packed.registry import packed_layouts


def save(model: nn.Module, folder: str | os.PathLike, processor: Any = None) -> Path:
    """Write `model` (and its tokenizer or image processor) to `folder`, atomically.

    `processor` defaults to the one `tc.load` attached to the model. `tc.load(folder)`
    gives both back, with the record of what was applied; the record holds the sha256 of
    every file written, which `tc.load(folder, verify=True)` checks. A model loaded with
    `lazy=True` is written a shard a block, from its spooled results.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"cannot save to {str(folder)!r}: it is a file, expected a folder path")
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"save expects a Hugging Face model (with save_pretrained), got {type(model).__name__}")
    processor = processor if processor is not None else getattr(model, "tc_processor", None)
    drop_gguf_marker(model)
    with written_atomically(folder) as tmp:
        layouts = packed_layouts(model)
        # packed models load through tc.load, by their module names as they are in memory (a
        # family transformers renames on save, e.g. ViT, would not match its layouts otherwise)
        if lazy_of(model) is not None:
            write_sharded(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True, save_original_format=not layouts)
        if processor is not None:
            processor.save_pretrained(tmp)
        record = replace(record_of(model), modules=layouts, files=file_digests(tmp))
        (tmp / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")
    return folder


def disk_bytes(model: nn.Module) -> int | None:
    """Bytes of the model's weight files as `save` writes them; None for a model that
    cannot be saved (no `save_pretrained`)."""
    if not hasattr(model, "save_pretrained"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return folder_bytes(save(model, Path(tmp) / "model"))
