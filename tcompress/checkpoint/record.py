"""The record of what a model is and what was applied to it, saved as `tcompress.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.checkpoint.integrity import CheckpointError

RECORD_FILE = "tcompress.json"
FORMAT_VERSION = 1


@dataclass
class Record:
    """What a model is and what was applied to it; saved as `tcompress.json`."""

    source: str
    applied: list[dict[str, Any]] = field(default_factory=list)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # packed modules' layouts, set on save
    files: dict[str, str] = field(default_factory=dict)  # sha256 of every file written beside it, set on save
    format: int = FORMAT_VERSION

    @classmethod
    def read(cls, folder: Path) -> Record | None:
        path = Path(folder) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{str(path)!r}: not readable JSON ({error})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{str(path)!r}: expected a JSON object, got {type(data).__name__}")
        return cls(source=data.get("source", str(folder)), applied=data.get("applied", []),
                   modules=data.get("modules", {}), files=data.get("files", {}))


def record_of(model: nn.Module) -> Record:
    """The model's record, created empty for a model tcompress did not load."""
    record = getattr(model, "tc_record", None)
    if record is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        record = Record(source=str(source))
        model.tc_record = record
    return record
