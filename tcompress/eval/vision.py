"""Top-1 accuracy of image classifiers."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from tcompress.data.vision import ImageSet, check_images


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
