"""ViT post-training quantization: the activation grids against references on known
distributions, RepQ-ViT's reparameterization is exact in float, W/A quantization of a
tiny ViT, save/load, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import tcompress as tc
from tcompress.models.adapters import adapter
from tcompress.packed.activations import ActQuantizer, fake_quantize
from tcompress.quantize.vit import ViTQuant, observe_output, reparameterize


def tiny_vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=64, intermediate_size=96,
                                    num_hidden_layers=2, num_attention_heads=4, num_labels=10)
    return transformers.ViTForImageClassification(config).eval()


def images(n=48):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_twin_uniform_against_a_literal_reference():
    x = torch.nn.functional.gelu(torch.randn(500, generator=torch.Generator().manual_seed(0)) * 2)
    bits, scale, scale_neg = 4, 0.4, 0.17 / 7
    got = fake_quantize(x, "twin", bits, torch.tensor(scale), torch.tensor(0.0), torch.tensor(scale_neg))
    for value, quantized in zip(x.tolist(), got.tolist()):
        if value >= 0:
            expected = min(round(value / scale), 7) * scale
        else:
            expected = -min(round(-value / scale_neg), 7) * scale_neg
        assert quantized == pytest.approx(expected, abs=1e-6)


def test_twin_uniform_beats_uniform_on_post_gelu_values():
    x = torch.nn.functional.gelu(torch.randn(4000, 1, generator=torch.Generator().manual_seed(0)) * 3)
    errors = {}
    for kind in ("twin", "uniform"):
        quantizer = ActQuantizer(kind, 4)
        quantizer.observing = True
        quantizer(x)
        quantizer.fit(search=True)
        errors[kind] = (quantizer(x) - x)[x < 0].pow(2).mean().item()  # the negative tail GELU keeps
    assert errors["twin"] < 0.1 * errors["uniform"]


def test_log2_grid_on_probabilities():
    probs = torch.tensor([1.0, 0.5, 2**-0.5, 0.3, 2**-7, 2**-9, 0.0])
    got = fake_quantize(probs, "log2", 4, torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0))
    expected = torch.tensor([1.0, 0.5, 2**-0.5, 2**-1.5, 2**-7, 0.0, 0.0])  # -2 log2(0.3) = 3.47 -> 3; 2^-9 is past 2^-7
    torch.testing.assert_close(got, expected)


def test_reparameterization_is_exact_in_float():
    model = tiny_vit()
    pixels = images()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        block = adapter(model).blocks()[0]
        ranges = observe_output(model, block.attn_norm, [pixels])
        reparameterize(block.attn_norm, list(block.attn_in.values()), ranges, bits=4)
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-5)
        after = observe_output(model, block.attn_norm, [pixels])
    spread = lambda r: (r[1] - r[0]).max() / (r[1] - r[0]).min()  # noqa: E731
    assert spread(after) < spread(ranges)  # channels' ranges closer together


@pytest.mark.parametrize("bits, limit", [(8, 0.02), (4, 0.15)])
def test_weights_and_activations_quantized(bits, limit):
    model, pixels = tiny_vit(), images()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    errors = {}
    for quantizers in ("vit", "minmax"):
        quantized = copy.deepcopy(model)
        tc.apply(quantized, ViTQuant(bits=bits, act_bits=bits, quantizers=quantizers), pixels[:32], progress=False)
        layer = quantized.vit.layers[0]
        assert isinstance(layer.mlp.fc2, tc.packed.QuantLinear) and layer.mlp.fc2.input_quantizer is not None
        assert layer.attention.probs_quantizer is not None
        with torch.no_grad():
            got = quantized(pixel_values=pixels).logits
        errors[quantizers] = ((got - expected).norm() / expected.norm()).item()
    assert errors["vit"] < limit and errors["vit"] <= errors["minmax"] * 1.05


def test_quantized_vit_saves_and_loads(tmp_path):
    model, pixels = tiny_vit(), images()
    tc.apply(model, ViTQuant(bits=4, act_bits=6), pixels[:32], progress=False)
    tc.save(model, tmp_path / "vit")
    loaded, _ = tc.load(tmp_path / "vit")
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits,
                                   rtol=0, atol=0)


def test_bad_vit_quantization_settings():
    with pytest.raises(ValueError, match=r"act_bits=5: the simulated activation quantizers run \(4, 6, 8\) bits"):
        ViTQuant(act_bits=5)
    with pytest.raises(ValueError, match="quantizers must be one of"):
        ViTQuant(quantizers="ptq")
    with pytest.raises(ValueError, match="quantizes ViT/DeiT classifiers"):
        tc.apply(transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)),
            ViTQuant(), images())
    with pytest.raises(ValueError, match="calibration must be images"):
        tc.apply(tiny_vit(), ViTQuant(), torch.randint(0, 10, (4, 16)), progress=False)


def test_images_of_the_wrong_size_or_channels_are_refused():
    from tcompress.data.vision import ImageSet

    model = tiny_vit()
    for shape, match in (((4, 1, 32, 32), r"\(1, 32, 32\).*takes \(1, 28, 28\)"), ((4, 3, 28, 28), r"\(3, 28, 28\)")):
        wrong = torch.randn(*shape)
        with pytest.raises(ValueError, match=match):
            tc.eval.accuracy(model, ImageSet(wrong, torch.zeros(4, dtype=torch.long), ["a"]), progress=False)
        with pytest.raises(ValueError, match=match):
            tc.apply(copy.deepcopy(model), ViTQuant(), wrong, progress=False)
