"""Checkpoints saved by an earlier version load bit-exactly: the same tensors, and the same logits
to float rounding (the forward is transformers', whose releases may order a sum differently)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tcompress as tc

FIXTURES = Path(__file__).parents[1] / "fixtures" / "checkpoints"


@pytest.mark.parametrize("name", ["llama", "opt", "vit"])
def test_a_checkpoint_saved_before_loads_bit_exactly(name):
    folder = FIXTURES / name
    model, _ = tc.load(folder)
    expected = load_file(folder.with_name(f"{name}.expected.safetensors"))
    inputs = expected["inputs"]
    with torch.no_grad():
        logits = model(**({"pixel_values": inputs} if inputs.is_floating_point() else {"input_ids": inputs})).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-6)
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
