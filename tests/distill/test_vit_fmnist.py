"""The shipped vision subject: `vit-fmnist` loads and keeps its Fashion-MNIST accuracy, and the
ViT tools (quantization, token merging) run on it; the training recipe's pieces work."""

from __future__ import annotations

import copy
import re
import types

import numpy as np
import pytest
import torch

import tcompress as tc
from tcompress.cli import main, train_vit
from tcompress.distill.vit_fmnist import (
    FashionCNN,
    augment,
    distillation_loss,
    load_teacher,
    new_model,
    save_teacher,
    train_cnn_teacher,
    train_vit_fmnist,
    update_average,
    widen_mlp,
)
from tcompress.prune.tokens import merge_tokens

from helpers import needs_fashion_mnist, write_idx


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
    # the shipped weights score 90.00% on all 10,000 test images and 90.4% on this slice
    assert tc.eval.accuracy(model, test_slice, progress=False) >= 0.90


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


def test_widened_mlp_computes_the_same():
    model = new_model([str(i) for i in range(10)]).eval()
    pixels = torch.randn(3, 1, 28, 28)
    before = model(pixel_values=pixels).logits
    widen_mlp(model, 256)
    assert model.config.intermediate_size == 256
    assert all(layer.mlp.fc1.out_features == 256 and layer.mlp.fc2.in_features == 256 for layer in model.vit.layers)
    assert model.vit.layers[0].mlp.fc1.weight[192:].abs().sum() > 0  # the new channels can learn
    torch.testing.assert_close(model(pixel_values=pixels).logits, before, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="intermediate_size must exceed the model's 256"):
        widen_mlp(model, 256)


def test_widened_model_saves_and_loads(tmp_path):
    model = widen_mlp(new_model([str(i) for i in range(10)]).eval(), 224)
    tc.save(model, tmp_path / "wide")
    loaded, _ = tc.load(tmp_path / "wide")
    pixels = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_saved_teacher_round_trips(tmp_path):
    torch.manual_seed(0)
    teacher = FashionCNN().eval()
    save_teacher(teacher, tmp_path / "cnn.safetensors")
    loaded = load_teacher(tmp_path / "cnn.safetensors")
    pixels = torch.randn(2, 1, 28, 28)
    assert not loaded.training
    assert torch.equal(loaded(pixel_values=pixels).logits, teacher(pixel_values=pixels).logits)
    with pytest.raises(FileNotFoundError, match="teacher: no file"):
        load_teacher(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not written by save_teacher"):
        load_teacher(tmp_path / "other.safetensors")


@pytest.mark.parametrize("argv, match", [
    (["--intermediate-size", "384"], "--intermediate-size widens a trained model"),
    (["--save-teacher", "T"], "--save-teacher saves the CNN"),
    (["--teacher", "none.safetensors"], "--teacher: teacher: no file"),
    (["--ema", "1.5"], r"ema must be a decay in \(0, 1\).*got 1.5"),
    (["--distillation", "soft", "--temperature", "0"], "temperature must be positive, got 0.0"),
])
def test_train_vit_cli_rejects_unusable_options(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(["train-vit", "--out", "o", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_train_vit_cli_checks_the_widening_before_training_a_teacher(tmp_path, monkeypatch, capsys):
    model = new_model([str(i) for i in range(10)])
    tc.save(model, tmp_path / "start")
    monkeypatch.setattr(train_vit, "train_cnn_teacher", lambda **_: pytest.fail("the teacher was trained first"))
    assert main(["train-vit", "--out", str(tmp_path / "o"), "--start", str(tmp_path / "start"), "--teacher", "cnn",
                 "--intermediate-size", "100"]) == 2
    assert "--intermediate-size: intermediate_size must exceed the model's 192, got 100" in capsys.readouterr().err


def fake_fashion_mnist(folder, n=16, labels=None):
    """IDX train and test files of random images, labels 0..9 (or those given)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10 if labels is None else labels)
    return folder


def test_cnn_teacher_then_distilled_vit(tmp_path, monkeypatch):
    data = fake_fashion_mnist(tmp_path / "images")
    teacher, accuracy = train_cnn_teacher(epochs=1, batch_size=8, data=str(data), progress=False)
    assert isinstance(teacher, FashionCNN) and not teacher.training and 0 <= accuracy <= 1
    asked = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda pixel_values: asked.append(pixel_values.shape) or forward(pixel_values))
    result = train_vit_fmnist(tmp_path / "vit", epochs=1, batch_size=8, data=str(data), teacher=teacher, progress=False)
    assert asked == [(8, 1, 28, 28)] * 2  # the teacher labelled every training batch
    assert 0 <= result["accuracy"] <= 1
    assert tc.load(tmp_path / "vit")[0].config.num_labels == 10


def test_hard_distillation_pulls_towards_the_teacher(tmp_path):
    """Almost every label is 0 and the teacher always answers 3: the student trained with it
    gives 3 a large share of its probability, the one trained on the labels alone almost none."""
    labels = np.zeros(32)
    labels[-1] = 9  # ten classes
    data = fake_fashion_mnist(tmp_path / "images", n=32, labels=labels)

    class Three(torch.nn.Module):
        def forward(self, pixel_values):
            logits = torch.zeros(len(pixel_values), 10)
            logits[:, 3] = 1
            return types.SimpleNamespace(logits=logits)

    def share_of_three(teacher, out):
        train_vit_fmnist(tmp_path / out, epochs=2, batch_size=8, lr=3e-3, data=str(data), teacher=teacher,
                         progress=False)
        model, processor = tc.load(tmp_path / out)
        images = tc.data.images(str(data), processor, split="test")
        return model(pixel_values=images.pixel_values).logits.softmax(-1)[:, 3].mean().item()

    taught, alone = share_of_three(Three(), "taught"), share_of_three(None, "alone")
    assert taught > 0.25 and alone < 0.05


def test_distillation_losses_against_their_definitions():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 10), torch.randn(5, 10) * 3
    hard = distillation_loss(student, teacher, "hard")
    expected = -student.log_softmax(-1)[torch.arange(5), teacher.argmax(-1)].mean()
    torch.testing.assert_close(hard, expected)
    t = 2.0
    p = (teacher / t).softmax(-1)
    kl = (p * (p.log() - (student / t).log_softmax(-1))).sum(-1).mean() * t * t
    torch.testing.assert_close(distillation_loss(student, teacher, "soft", t), kl)
    assert distillation_loss(teacher, teacher, "soft", t).abs() < 1e-6  # no loss when the student matches


def test_weight_average_step():
    model, averaged = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = copy.deepcopy(averaged.state_dict())
    update_average(averaged, model, 0.9)
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * model.state_dict()[name])


def test_training_with_a_weight_average_saves_the_average(tmp_path):
    """With a decay so close to 1 that the average barely moves, the saved model is the start
    model, while the weights trained without the average have moved."""
    data = fake_fashion_mnist(tmp_path / "images")
    start = new_model([str(i) for i in range(10)])
    tc.save(start, tmp_path / "start")
    kept = start.vit.layers[0].mlp.fc1.weight

    def trained(out, **options):
        train_vit_fmnist(tmp_path / out, epochs=1, batch_size=8, lr=1e-2, data=str(data), start=tmp_path / "start",
                         progress=False, **options)
        return tc.load(tmp_path / out)[0].vit.layers[0].mlp.fc1.weight

    teacher = FashionCNN()
    assert (trained("averaged", ema=1 - 1e-7, teacher=teacher, distillation="soft") - kept).abs().max() < 1e-5
    assert (trained("plain", teacher=teacher, distillation="soft") - kept).abs().max() > 1e-3
