"""Quantization-aware training: the straight-through and LSQ gradients by hand, packing
that computes exactly what training saw, a start from a PTQ model, and learning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.distill import LogitKD, TrainConfig, distill, kl_loss
from tcompress.packed import QuantLinear
from tcompress.packed.grid import Grid
from tcompress.quantize import QAT, FakeQuantLinear, convert_qat, prepare_qat
from tcompress.quantize.qat import round_ste

from helpers import VOCAB, tiny_llama


def test_round_passes_the_gradient_straight_through():
    x = torch.tensor([0.2, 1.7, -2.5], requires_grad=True)
    round_ste(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3))


def test_scale_gradient_is_lsq():
    torch.manual_seed(0)
    weight = torch.randn(1, 8)
    grid = Grid(bits=3, group_size=8)
    layer = FakeQuantLinear.from_linear(nn.Linear(8, 1, bias=False), grid)
    layer.weight.data = weight.clone()
    layer.log_scale.data = torch.tensor([[0.3]]).log()
    layer.zero.copy_(torch.tensor([[3.0]]))
    layer.quantized_weight().sum().backward()
    s, z, maxq = 0.3, 3.0, grid.maxq
    v = weight / torch.tensor(s).half().float() + z
    inside = (torch.round(v) - z) - (v - z)  # LSQ: round(w/s) - w/s inside the range
    per_weight = torch.where(v.round() < 0, torch.tensor(-z), torch.where(v.round() > maxq, torch.tensor(maxq - z), inside))
    expected = per_weight.sum() / (8 * maxq) ** 0.5  # LSQ's dL/ds; the parameter is log s: times s
    torch.testing.assert_close(layer.log_scale.grad, s * expected.reshape(1, 1), rtol=1e-4, atol=1e-6)
    # weights inside the range get gradient 1, clipped ones 0 (STE through the clamp)
    torch.testing.assert_close(layer.weight.grad, ((v.round() >= 0) & (v.round() <= maxq)).float())


def test_packed_model_computes_what_training_saw_and_reloads_bit_exactly(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama().eval()
    prepare_qat(model, QAT(bits=3, group_size=32))
    assert isinstance(model.model.layers[0].mlp.down_proj, FakeQuantLinear)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        for module in model.modules():  # as if trained: weights and scales moved
            if isinstance(module, FakeQuantLinear):
                module.weight.add_(0.01 * torch.randn_like(module.weight))
                module.log_scale.add_(0.05)
        expected = model(input_ids=ids).logits
    convert_qat(model)
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    tc.save(model, tmp_path / "qat")
    loaded, _ = tc.load(tmp_path / "qat")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_qat_starts_from_a_ptq_model_exactly():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    tc.apply(model, tc.quantize.RTN(bits=3, group_size=32))
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        prepare_qat(model, QAT(bits=4))  # packed linears keep their own grid
        assert model.model.layers[0].self_attn.q_proj.grid.bits == 3
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_quantization_aware_distillation_lowers_the_kl():
    torch.manual_seed(0)
    teacher = tiny_llama().eval()
    data = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    student = prepare_qat(copy.deepcopy(teacher), QAT(bits=2, group_size=32))

    def kl(model):
        return {"kl": kl_loss(model(input_ids=data).logits, teacher(input_ids=data).logits).item()}

    history = distill(student, data, [LogitKD()], TrainConfig(steps=25, batch_size=8, lr=2e-3), teacher=teacher,
                      evaluate=kl, progress=False)
    assert history.evals[-1]["kl"] < 0.7 * history.evals[0]["kl"]


def test_bad_qat_settings():
    with pytest.raises(ValueError, match="bits must be one of"):
        QAT(bits=1)
    with pytest.raises(ValueError, match="matches no linear"):
        prepare_qat(tiny_llama(), QAT(include=("nothing.*",)))
    with pytest.raises(ValueError, match="does not divide"):
        prepare_qat(tiny_llama(), QAT(group_size=40))


def test_activation_qat_packs_into_an_input_quantizer(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_llama().eval()
    data = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    student = prepare_qat(copy.deepcopy(teacher), QAT(bits=4, group_size=32, act_bits=8))
    distill(student, data, [LogitKD()], TrainConfig(steps=3, batch_size=8, lr=1e-3), teacher=teacher, progress=False)
    quantizer = student.model.layers[0].mlp.down_proj.input_quantizer
    assert bool(quantizer.started) and quantizer.log_scale.grad is None  # trained, then gradients cleared
    with torch.no_grad():
        expected = student(input_ids=data[:2]).logits
    convert_qat(student)
    packed = student.model.layers[0].mlp.down_proj
    assert isinstance(packed.input_quantizer, tc.packed.ActQuantizer) and packed.input_quantizer.bits == 8
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=data[:2]).logits, expected, rtol=1e-5, atol=1e-5)
    tc.save(student, tmp_path / "w4a8")
    loaded, _ = tc.load(tmp_path / "w4a8")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=data[:2]).logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="act_bits must be None or one of"):
        QAT(act_bits=5)
