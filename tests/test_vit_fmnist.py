"""The shipped vision subject: `vit-fmnist` loads and keeps its Fashion-MNIST accuracy, and the
ViT tools (quantization, token merging) run on it; the training recipe's pieces work."""

from __future__ import annotations

import copy

import pytest
import torch

import tcompress as tc
from tcompress.models.vit_fmnist import augment, new_model
from tcompress.prune.tokens import merge_tokens

from conftest import needs_fashion_mnist


@pytest.fixture(scope="module")
def vit():
    return tc.load("vit-fmnist")


@pytest.fixture(scope="module")
def test_slice(vit):
    return tc.data.images("fashion-mnist", vit[1], split="test", limit=1000)


@needs_fashion_mnist
@pytest.mark.slow
def test_shipped_model_keeps_its_accuracy(vit, test_slice):
    model, _ = vit
    assert model.config.model_type == "vit" and model.config.num_labels == 10
    # the shipped weights score 88.22% on all 10,000 test images and 88.9% on this slice
    assert tc.eval.accuracy(model, test_slice, progress=False) >= 0.885


@needs_fashion_mnist
@pytest.mark.slow
def test_vit_tools_on_the_shipped_model(vit, test_slice):
    model, _ = vit
    fp32 = tc.eval.accuracy(model, test_slice, progress=False)
    quantized = copy.deepcopy(model)
    tc.apply(quantized, tc.quantize.ViTQuant(bits=8, act_bits=8), test_slice.pixel_values[:64], progress=False)
    assert tc.eval.accuracy(quantized, test_slice, progress=False) >= fp32 - 0.01
    merged = merge_tokens(copy.deepcopy(model), 2)
    assert tc.eval.accuracy(merged, test_slice, progress=False) >= fp32 - 0.02


def test_training_recipe_pieces():
    model = new_model([str(i) for i in range(10)])
    assert model.config.patch_size == 4 and model.config.image_size == 28
    pixels = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    shifted = augment(pixels, torch.Generator().manual_seed(0))
    assert shifted.shape == pixels.shape
    assert not torch.equal(shifted, pixels)  # cropped somewhere or flipped
