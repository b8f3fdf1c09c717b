"""Labelled image sets: IDX files (MNIST, Fashion-MNIST), a folder of labelled images, or
a `datasets` image set, turned into model inputs by the model's image processor.

`fashion-mnist` and `mnist` are looked up in $TCOMPRESS_DATA/<name> and in Debian's
/usr/share/datasets/<name> (package `dataset-fashion-mnist`).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

IDX_NAMES = ("mnist", "fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass
class ImageSet:
    """Model-ready images and their labels."""

    pixel_values: Tensor  # [n, channels, height, width], float
    labels: Tensor  # [n], long
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def images(source: str | os.PathLike, processor: Any = None, split: str = "test", limit: int | None = None) -> ImageSet:
    """Load a labelled image set. Without a processor, pixels are scaled to [0, 1]."""
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    arrays, labels, classes = _raw(str(source), split)
    arrays, labels = arrays[:limit], labels[:limit]
    return ImageSet(_pixels(arrays, processor), torch.as_tensor(np.asarray(labels), dtype=torch.long), classes)


def _raw(source: str, split: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    folder = _idx_folder(source)
    if folder is not None:
        arrays, labels = read_idx_pair(folder, split)
        classes = FASHION_CLASSES if source == "fashion-mnist" else [str(i) for i in range(int(labels.max()) + 1)]
        return list(arrays), labels.tolist(), classes
    path = Path(source).expanduser()
    if path.is_dir():
        return _image_folder(path)
    if path.exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"image set {source!r}: not a folder of IDX files or of labelled images")
    return _hub_images(source, split)


def _idx_folder(source: str) -> Path | None:
    """The folder holding the IDX files of `source` (a name or a path), if any."""
    candidates = [Path(source).expanduser()]
    if source in IDX_NAMES:
        if os.environ.get("TCOMPRESS_DATA"):
            candidates.insert(0, Path(os.environ["TCOMPRESS_DATA"]) / source)
        candidates.append(Path("/usr/share/datasets") / source)
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*-idx3-ubyte*")):
            return folder
    if source in IDX_NAMES:
        raise FileNotFoundError(
            f"image set {source!r} not found in {', '.join(map(str, candidates[:-1] or candidates))} or "
            f"/usr/share/datasets: install it with `apt-get install dataset-{source}` or set TCOMPRESS_DATA"
        )
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test' for IDX image sets, got {split!r}")
    found = {kind: sorted(folder.glob(f"{prefix}-{kind}-idx*-ubyte*")) for kind in ("images", "labels")}
    if not found["images"] or not found["labels"]:
        raise FileNotFoundError(f"no {prefix}-images/{prefix}-labels IDX files in {str(folder)!r}")
    return read_idx(found["images"][0]), read_idx(found["labels"][0])


def _image_folder(folder: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    """A folder with one subfolder of images per class (the ImageFolder layout)."""
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                arrays.append(np.asarray(Image.open(file)))
                labels.append(label)
    if not arrays:
        raise ValueError(f"{str(folder)!r} holds no images in class subfolders ({'/'.join(IMAGE_SUFFIXES)})")
    return arrays, labels, classes


def _hub_images(name: str, split: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"unknown image set {name!r}: expected {', '.join(IDX_NAMES)}, a folder, or a `datasets` name "
            "(install `tcompress[datasets]` for the latter)"
        ) from None
    rows = datasets.load_dataset(name, split=split)
    image_key = next(k for k in ("image", "img", "pixel_values") if k in rows.column_names)
    label_key = next(k for k in ("label", "labels", "fine_label") if k in rows.column_names)
    feature = rows.features[label_key]
    classes = list(getattr(feature, "names", [])) or sorted({str(v) for v in rows[label_key]})
    return [np.asarray(image) for image in rows[image_key]], list(rows[label_key]), classes


def _pixels(arrays: list[np.ndarray], processor: Any) -> Tensor:
    """`[n, c, h, w]` model inputs: through the processor, else scaled to [0, 1]."""
    channels_first = [a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0) for a in arrays]
    if processor is None:
        return torch.from_numpy(np.stack(channels_first)).float() / 255.0
    return processor(images=channels_first, return_tensors="pt", input_data_format="channels_first")["pixel_values"]


def check_images(model: Any, pixel_values: torch.Tensor) -> None:
    """Refuse images whose shape the model was not built for, naming both."""
    config = getattr(model, "config", None)
    channels, size = getattr(config, "num_channels", None), getattr(config, "image_size", None)
    if channels is None or size is None:
        return
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    expected = (channels, *size)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(f"images of shape {tuple(pixel_values.shape[1:])} (channels, height, width) do not fit this "
                         f"model, which takes {expected}: resize or convert them with the model's image processor")
