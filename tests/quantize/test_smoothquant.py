import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.packed import Int8Linear
from tcompress.packed import int8 as int8_module
from tcompress.packed.int8 import int8_matmul, simulated_int8_matmul
from tcompress.quantize import SmoothQuant
from tcompress.quantize.smoothquant import smoothing_scales

from helpers import TINY, build, example_inputs, sqnr_db
from reference import int8 as int8_reference

# SQNR (dB) of the model output against float, about 2 dB under what the tiny models reach
# (W8A8: llama 40.6, gpt2 41.5, bert 69.6; W8: 43.0, 44.1, 71.6). Rounding the activations
# down instead of to nearest costs 3 to 6 dB, 4-bit activations about 20.
FLOORS_DB = {  # (family, activations quantized)
    ("llama", True): 38.5, ("gpt2", True): 39.5, ("bert", True): 67.5,
    ("llama", False): 41.0, ("gpt2", False): 42.0, ("bert", False): 69.5,
}



def calibration(family, n=4):
    inputs = example_inputs(family, batch=n)
    return inputs, [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


def output(model, inputs):
    with torch.no_grad():
        out = tc.engine.inputs.call_model(model, inputs)
    return out["logits"] if "logits" in out else out["last_hidden_state"]


@pytest.mark.parametrize("shape", [(1, 7, 3), (5, 100, 63), (33, 2500, 17)])  # k = 2500: several float chunks
def test_int8_matmul_is_exact_and_the_simulated_path_agrees(shape, monkeypatch):
    monkeypatch.setattr(int8_module, "CPU_INT_MM", True)  # torch._int_mm itself
    m, k, n = shape
    generator = torch.Generator().manual_seed(k)
    a = torch.randint(-127, 128, (m, k), generator=generator, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8)
    a[0] = 127
    b[0] = -127  # the extreme products
    expected = (a.long() @ b.long().t()).int()
    assert torch.equal(int8_matmul(a, b.t()), expected)
    assert torch.equal(simulated_int8_matmul(a, b.t()), expected)


@pytest.mark.parametrize("with_input_scale", [False, True])
def test_int8_linear_equals_the_literal_integer_reference(with_input_scale):
    torch.manual_seed(0)
    linear = nn.Linear(100, 63)
    x = torch.randn(2, 5, 100) * torch.linspace(0.1, 8, 100)
    x[1, 2] = 0  # a token of zeros: any scale, zero codes
    s = torch.rand(100) * 3 + 0.2 if with_input_scale else None
    module = Int8Linear.from_linear(linear, activations=True, input_scale=s)
    expected = int8_reference.w8a8_linear(x, linear.weight.detach(), linear.bias.detach(), s)
    with torch.no_grad():
        got = module(x)
    assert got.shape == (2, 5, 63)
    torch.testing.assert_close(got.reshape(-1, 63), expected, rtol=0, atol=0)


def test_matmul_path_is_named_and_the_fallback_computes_the_same(monkeypatch):
    torch.manual_seed(0)
    linear, x = nn.Linear(64, 33), torch.randn(7, 64)
    w8a8, w8 = Int8Linear.from_linear(linear), Int8Linear.from_linear(linear, activations=False)
    assert w8.matmul == "float" and "activations=float" in repr(w8)
    monkeypatch.setattr(int8_module, "CPU_INT_MM", True)  # the integer kernel, as TCOMPRESS_CPU_INT_MM=1 asks
    assert w8a8.matmul == "int8" and "matmul=int8" in repr(w8a8)
    with torch.no_grad():
        real = w8a8(x)
        monkeypatch.setattr(int8_module, "CPU_INT_MM", False)  # the CPU default: exact float products
        assert w8a8.matmul == "simulated" and "matmul=simulated" in repr(w8a8)
        assert torch.equal(w8a8(x), real)


def test_weight_only_dequantizes_and_runs_a_float_linear():
    torch.manual_seed(0)
    linear, x, s = nn.Linear(64, 33), torch.randn(7, 64), torch.rand(64) + 0.5
    module = Int8Linear.from_linear(linear, activations=False, input_scale=s)
    weight = module.qweight.float() * module.scales[:, None]
    with torch.no_grad():
        torch.testing.assert_close(module(x), nn.functional.linear(x / s, weight, linear.bias))
        torch.testing.assert_close(module.dequantize(), weight / s)  # the weight the raw input meets


@dataclass(frozen=True)
class SmoothOnly(SmoothQuant):
    """Smoothing without quantization; explicit input scales become forward pre-hooks."""

    name = "test-smooth-only"

    def apply_block(self, adapter, block, inputs, run):
        _, input_scales = self.smooth(adapter, block, inputs, run)
        for name, s in input_scales.items():
            adapter.model.get_submodule(name).register_forward_pre_hook(lambda m, args, s=s: (args[0] / s,))


@pytest.mark.parametrize("family", sorted(TINY))
def test_smoothing_alone_leaves_every_family_unchanged(family):
    model, original = build(family), build(family)
    inputs, calib = calibration(family)
    tc.engine.sequential(model, calib, SmoothOnly(alpha=0.5), progress=False)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, original.get_parameter(name))]
    assert len(changed) > len(tc.adapter(original).blocks()[0].linears)  # weights and where 1/s was folded
    torch.testing.assert_close(output(model, inputs), output(original, inputs), rtol=1e-4, atol=1e-4)


def test_smoothing_scales_are_the_formula_and_tame_an_outlier_channel():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    batches = [torch.randn(16, 64) for _ in range(5)]
    for x in batches:
        x[:, 7] *= 50  # one activation channel far larger than the rest
    weight, x, float_out = linear.weight.detach().clone(), batches[4], linear(batches[4]).detach()
    original = Int8Linear.from_linear(linear)  # W8A8 without smoothing
    model = nn.Sequential(linear)  # no known family: the linear is a group by itself, no norm to fold into
    tc.apply(model, SmoothQuant(alpha=0.5), batches[:4], progress=False)
    module = model[0]
    assert isinstance(module, Int8Linear) and module.input_scale is not None
    act = torch.cat(batches[:4]).abs().amax(dim=0)
    expected = act.pow(0.5) / weight.abs().amax(dim=0).pow(0.5)
    torch.testing.assert_close(module.input_scale, expected, rtol=1e-6, atol=0)
    with torch.no_grad():
        assert sqnr_db(float_out, module(x)) > sqnr_db(float_out, original(x)) + 6


def test_smoothing_scales_leave_dead_channels_alone():
    act, weight = torch.tensor([4.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.0])
    assert smoothing_scales(act, weight, 0.5).tolist() == [2.0, 1.0, 1.0]
    assert smoothing_scales(act, weight, 1.0).tolist() == [4.0, 1.0, 1.0]


@pytest.mark.parametrize("activations", [True, False])
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_int8_model_holds_int8_weights_and_stays_close_to_float(family, activations):
    model, original = build(family), build(family)
    inputs, calib = calibration(family)
    tc.apply(model, SmoothQuant(activations=activations), calib, progress=False)
    blocks = tc.adapter(original).blocks()
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == len(blocks) * len(blocks[0].linears)
    assert all(m.qweight.dtype == torch.int8 and m.activations == activations for m in int8)
    assert all(m.nbytes() < m.in_features * m.out_features * 1.1 + 8 * (m.in_features + m.out_features) for m in int8)
    assert tc.core.tensor_bytes(model) < tc.core.tensor_bytes(original)
    assert sqnr_db(output(original, inputs), output(model, inputs)) > FLOORS_DB[family, activations]


def test_activations_really_are_quantized():
    outputs = {}
    for activations in (True, False):
        model = build("llama")
        inputs, calib = calibration("llama")
        tc.apply(model, SmoothQuant(activations=activations), calib, progress=False)
        outputs[activations] = output(model, inputs)
    assert not torch.allclose(outputs[True], outputs[False], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family, activations", [("llama", True), ("bert", False)])
def test_int8_model_saves_and_loads_bit_exactly(tmp_path, family, activations):
    model = build(family)
    inputs, calib = calibration(family, n=2)
    tc.apply(model, SmoothQuant(activations=activations), calib, progress=False)
    tc.save(model, tmp_path / "q")
    loaded, _ = tc.load(tmp_path / "q")
    modules = json.loads((tmp_path / "q" / "tcompress.json").read_text())["modules"]
    assert modules and all(layout["format"] == "int8_linear" for layout in modules.values())
    assert any(layout["input_scale"] for layout in modules.values())  # llama's o_proj, bert's q/k/v
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            other = loaded.get_submodule(name)
            assert isinstance(other, Int8Linear) and other.layout() == module.layout(), name
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(output(model, inputs), output(loaded, inputs))


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\]"), ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": True}, "alpha must be"), ({"alpha": "0.5"}, "alpha must be"),
    ({"activations": "yes"}, "activations must be True"),
])
def test_bad_settings_are_refused_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmoothQuant(**kwargs)
    with pytest.raises(ValueError, match=match):
        tc.engine.method_from({"method": "smoothquant", **kwargs})


def test_missing_data_and_patterns_that_match_nothing_are_refused_before_work():
    model = build("llama")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="'smoothquant' needs calibration data"):
        tc.apply(model, SmoothQuant())
    with pytest.raises(ValueError, match=r"include pattern '\*mlp_typo\*' matches no linear"):
        tc.apply(model, SmoothQuant(include=("*mlp_typo*",)), calibration("llama")[1])
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())


def test_excluded_linears_stay_float():
    model, original = build("llama"), build("llama")
    inputs, calib = calibration("llama")
    tc.apply(model, SmoothQuant(exclude=("*.mlp.*",)), calib, progress=False)
    assert isinstance(model.model.layers[0].mlp.up_proj, nn.Linear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)
    assert sqnr_db(output(original, inputs), output(model, inputs)) > FLOORS_DB["llama", True]
