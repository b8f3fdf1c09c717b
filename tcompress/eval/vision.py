"""Top-1 accuracy of image classifiers."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from tcompress.data.vision import ImageSet


def check_images(model: nn.Module, pixel_values: torch.Tensor) -> None:
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


@torch.no_grad()
def accuracy(model: nn.Module, images: ImageSet, batch_size: int = 64, progress: bool = True) -> float:
    """Fraction of images whose arg-max class is the label."""
    if len(images) == 0:
        raise ValueError("the image set is empty")
    check_images(model, images.pixel_values)
    device = next(model.parameters()).device
    correct = 0
    batches = zip(images.pixel_values.split(batch_size), images.labels.split(batch_size))
    for pixels, labels in tqdm(batches, total=-(-len(images) // batch_size), desc="accuracy", disable=not progress):
        logits = model(pixel_values=pixels.to(device)).logits
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
    return correct / len(images)
