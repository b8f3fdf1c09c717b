"""Whether a saved folder is whole: readable weight files, and the sha256 of every file `tc.save`
wrote, recorded in `tcompress.json` (safetensors itself carries no checksum, so a flipped byte
in the tensor data would otherwise load silently).

Every problem is a `CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import SafetensorError, safe_open

from tcompress.models.loading import CheckpointError

CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """`{file name: sha256}` of every file in `folder` (but `skip`)."""
    return {path.name: sha256(path) for path in sorted(folder.iterdir()) if path.is_file() and path.name not in skip}


def verify_digests(folder: Path, digests: dict[str, str]) -> None:
    """Refuse a folder whose files differ from the digests `tc.save` recorded."""
    if not digests:
        raise CheckpointError(f"{str(folder)!r}: its tcompress.json records no file digests (saved before they were "
                              "recorded): nothing to verify against")
    for name, expected in digests.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r}: missing (tcompress.json lists it)")
        if sha256(path) != expected:
            raise CheckpointError(f"{str(path)!r}: its sha256 differs from the one tcompress.json recorded at save: "
                                  "the file changed or is corrupted")


def check_weight_files(folder: Path, safetensors_only: bool = True) -> list[Path]:
    """The folder's safetensors files, each opened once to check its header and length; a
    clear error where one is truncated or corrupted, or where there are no weight files (none
    at all, or no safetensors where only those will do)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files and (safetensors_only or not any(folder.glob("*.bin"))):
        found = sorted(p.name for p in folder.iterdir()) or ["nothing"]
        raise CheckpointError(f"{str(folder)!r}: no weight files (*.safetensors); the folder holds "
                              f"{', '.join(found[:8])}")
    for path in files:
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{str(path)!r}: not a readable safetensors file (truncated or corrupted?): "
                                  f"{error}") from None
    return files
