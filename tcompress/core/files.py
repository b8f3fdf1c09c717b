"""Atomic writes: a result is written under a hidden temporary name beside its destination
and moved into place only once whole, so a failed or refused write never leaves a file or
folder that loads under the final name, and an earlier one there survives until then."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def temporary_beside(path: Path) -> Path:
    """A hidden path in `path`'s folder, with the same suffix (loaders that go by it still know it)."""
    return path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}"


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(tmp: Path, final: Path) -> None:
    """Move the finished `tmp` (a file or folder) to `final`, replacing an earlier one only at the end."""
    if not final.exists():
        tmp.rename(final)
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    final.rename(old)
    tmp.rename(final)
    remove(old)


@contextlib.contextmanager
def written_atomically(final: Path) -> Iterator[Path]:
    """A temporary path to write `final`'s content to; moved into place if the body finishes,
    removed if it raises."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(final)
    try:
        yield tmp
        replace_path(tmp, final)
    finally:
        if tmp.exists():
            remove(tmp)
