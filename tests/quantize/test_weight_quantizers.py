import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.kernels import ops
from tcompress.packed import Grid, QuantLinear
from tcompress.packed.grid import quantize_weight
from tcompress.quantize import GPTQ, RTN
from tcompress.quantize.gptq import gptq_quantize

from helpers import TINY, build, example_inputs, hessian_case, sqnr_db
from reference import gptq as gptq_reference
from reference import hqq as hqq_reference
from reference import rtn as rtn_reference


@pytest.mark.parametrize("bits, group, symmetric", [(4, 25, False), (3, 50, False), (8, 100, True), (2, 20, True)])
def test_rtn_matches_the_reference(bits, group, symmetric):
    w = torch.randn(63, 100, generator=torch.Generator().manual_seed(0))
    codes, scales, zeros = quantize_weight(w, Grid(bits, group, symmetric))
    ref_codes, ref_scales, ref_zeros = rtn_reference.rtn(w, bits, group, symmetric)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(scales, ref_scales)
    torch.testing.assert_close(zeros, ref_zeros)


@pytest.mark.parametrize("bits, floor_db", [(8, 40.0), (4, 18.0), (3, 12.0), (2, 5.0)])
def test_rtn_sqnr_floors_on_a_tiny_model(bits, floor_db):
    model, original = build("llama"), build("llama")
    tc.apply(model, RTN(bits=bits, group_size=32))
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            assert sqnr_db(original.get_submodule(name).weight, module.dequantize()) > floor_db, name


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits, group", [(4, 32), (3, 48), (2, None)])
def test_gptq_codes_equal_the_literal_obs_reference(act_order, bits, group):
    w, _, h = hessian_case()
    grid = Grid(bits, group)
    codes, _, _ = gptq_quantize(w.double(), h.double(), grid, block_size=16, damp=0.01, act_order=act_order)
    expected = gptq_reference.gptq(w, h, grid, damp=0.01, act_order=act_order)
    assert torch.equal(codes, expected)


def test_gptq_beats_rtn_on_the_layer_output_error():
    w, x, h = hessian_case(seed=1)
    grid = Grid(3, 32)
    linear = nn.Linear(96, 33, bias=False)
    linear.weight.data.copy_(w)
    rtn = RTN(bits=3, group_size=32).apply(linear, None, "l").dequantize()
    codes, scales, zeros = gptq_quantize(w, h, grid)
    gptq = QuantLinear.from_codes(codes, scales, zeros, grid, None, torch.float32).dequantize()
    error = lambda q: (x @ (w - q).t()).pow(2).mean().item()  # noqa: E731
    assert error(gptq) < 0.7 * error(rtn)


@pytest.mark.parametrize("family", sorted(TINY))
def test_gptq_runs_on_every_family_and_stays_close(family):
    model, original = build(family), build(family)
    inputs = example_inputs(family, batch=4)
    calib = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(4)]
    tc.apply(model, GPTQ(bits=8, group_size=32), calib, progress=False)
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(quantized) == len(tc.adapter(original).blocks()) * len(tc.adapter(original).blocks()[0].linears)
    with torch.no_grad():
        out, ref = tc.engine.inputs.call_model(model, inputs), tc.engine.inputs.call_model(original, inputs)
    key = "logits" if "logits" in out else "last_hidden_state"
    assert sqnr_db(ref[key], out[key]) > 25


def test_quantized_model_saves_packed_and_loads_bit_exactly(tmp_path, tokenizer):
    model = build("llama")
    float_bytes = tc.core.tensor_bytes(model)
    tc.apply(model, RTN(bits=4, group_size=32))
    assert tc.core.tensor_bytes(model) < float_bytes
    tc.save(model, tmp_path / "q", tokenizer)
    loaded, _ = tc.load(tmp_path / "q")
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            other = loaded.get_submodule(name)
            assert isinstance(other, QuantLinear)
            assert torch.equal(other.qweight, module.qweight) and torch.equal(other.scales, module.scales)
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_w4_g64_bytes_are_within_5_percent_of_ideal():
    layer = nn.Linear(576, 1536, bias=False)
    q = RTN(bits=4, group_size=64).apply(layer, None, "x")
    ideal = 1536 * 576 * 4 / 8 + 1536 * (576 // 64) * 2 * 2  # codes + fp16 scales and zeros
    assert q.nbytes() == pytest.approx(ideal, rel=0.05)
    assert q.nbytes() / (1536 * 576 * 4) < 0.15  # vs fp32


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, "bits must be one of"), ({"bits": 1}, "bits must be one of"), ({"bits": 9}, "bits must be one of"),
    ({"group_size": 0}, "group_size must be"), ({"damp": 1.5}, "damp must be"),
])
def test_bad_quantizer_settings_are_refused_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTQ(**kwargs)


def test_group_size_that_does_not_divide_is_refused_before_work():
    model = build("llama")  # hidden 64, intermediate 96
    with pytest.raises(ValueError, match=r"group_size=48 does not divide the input dimension 64"):
        tc.apply(model, RTN(bits=4, group_size=48))
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # untouched


def test_gptq_needs_data_and_unknown_methods_are_named():
    with pytest.raises(ValueError, match="needs calibration data"):
        tc.apply(build("llama"), GPTQ())
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        tc.apply(build("llama"), {"method": "nope"})
    with pytest.raises(ValueError, match="selects no linear"):
        tc.apply(build("llama"), RTN(exclude=("*",)))


def test_hqq_zero_matches_the_elementwise_reference():
    from tcompress.packed.grid import fit_range
    from tcompress.packed.hqq import hqq_zero

    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w[0, 3] = 9.0  # an outlier
    grid = Grid(3, 64)
    scale, zero = fit_range(w, grid)
    # a few iterations: later ones may round a code that sits on .5 differently
    got = hqq_zero(w, scale, zero, grid.maxq, iterations=5)
    for r in range(6):
        expected = hqq_reference.hqq_zero(w[r], scale[r].item(), zero[r].item(), grid.maxq, iterations=5)
        assert got[r].item() == pytest.approx(expected, abs=1e-9)


def test_hqq_lowers_the_weight_error_of_rtn():
    layer = nn.Linear(256, 64, bias=False)
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(0))
    error = lambda q: (layer.weight - q.dequantize()).abs().mean().item()  # noqa: E731
    plain = RTN(bits=3, group_size=64).apply(layer, None, "l")
    hqq = tc.quantize.HQQ(bits=3, group_size=64).apply(layer, None, "l")
    assert error(hqq) < 0.97 * error(plain)
    assert not torch.equal(hqq.zeros, hqq.zeros.round())  # fractional zeros, stored


@pytest.mark.parametrize("make, match", [
    (lambda: Grid(4, 64, symmetric=True, search="hqq"), "needs symmetric=False"),
    (lambda: Grid(4, 64, search="best"), "search must be one of"),
    (lambda: tc.quantize.HQQ(search="mse"), "use RTN"),
])
def test_bad_search_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gptq_through_the_engine_uses_each_linears_true_hessian(monkeypatch):
    """Block 0's q/k/v (one shared Hessian) and gate (after q/k/v/o were quantized)."""
    monkeypatch.setattr(ops, "GEMV_ACTIVATIONS", "float")  # single samples: the exact float products
    model, original = build("llama"), build("llama")
    ids = example_inputs("llama", batch=3)["input_ids"]
    method = GPTQ(bits=4, group_size=32)
    tc.apply(model, method, ids, progress=False)
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.setdefault(n, []).append(a[0]))
             for n in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate_proj")]
    with torch.no_grad():
        for sample in ids:
            model(sample[None])  # the quantized model feeds gate_proj what the engine saw
    for hook in hooks:
        hook.remove()
    for observed, targets in [("model.layers.0.self_attn.q_proj", ("q_proj", "k_proj", "v_proj")),
                              ("model.layers.0.mlp.gate_proj", ("gate_proj",))]:
        x = torch.cat([t.reshape(-1, 64) for t in seen[observed]])
        h = 2 * x.t() @ x / len(x)
        for target in targets:
            part = "self_attn" if target != "gate_proj" else "mlp"
            name = f"model.layers.0.{part}.{target}"
            expected, _, _ = gptq_quantize(original.get_submodule(name).weight.detach(), h, method.grid)
            assert torch.equal(model.get_submodule(name).codes(), expected), name


def test_mixed_precision_by_pattern_is_a_list_of_stages():
    model = build("llama")
    tc.apply(model, RTN(bits=3, group_size=32, include=("*.mlp.*",)))
    tc.apply(model, RTN(bits=8, group_size=None))
    bits = {name: m.grid.bits for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert bits["model.layers.1.mlp.down_proj"] == 3 and bits["model.layers.1.self_attn.q_proj"] == 8
    assert isinstance(model.lm_head, nn.Linear)  # the head and the embeddings stay float


def test_a_pattern_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match=r"include pattern '\*mlp_typo\*' matches no linear"):
        tc.apply(build("llama"), RTN(include=("*mlp_typo*",)))
    with pytest.raises(ValueError, match=r"exclude pattern 'lm_head' matches no linear"):
        tc.apply(build("llama"), RTN(exclude=("lm_head",)))


def test_the_head_stays_float_unless_asked_and_a_tied_head_is_untied(tmp_path, tokenizer):
    from helpers import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama(tie_word_embeddings=True).eval()
    tc.apply(model, RTN(bits=4, group_size=32))
    assert not isinstance(model.lm_head, QuantLinear)
    tc.apply(model, RTN(bits=8, group_size=32, head=True, include=("lm_head",)))
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.grid.bits == 8
    assert isinstance(model.model.embed_tokens, nn.Embedding) and not model.config.tie_word_embeddings
    tc.save(model, tmp_path / "q", tokenizer)
    loaded, _ = tc.load(tmp_path / "q")
    assert torch.equal(loaded.lm_head.qweight, model.lm_head.qweight)
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_gptq_quantizes_the_head_from_the_final_norms_outputs():
    model, original = build("llama"), build("llama")
    ids = example_inputs("llama", batch=3)["input_ids"]
    method = GPTQ(bits=4, group_size=32, head=True, include=("lm_head",))
    tc.apply(model, method, ids, progress=False)
    assert isinstance(model.lm_head, QuantLinear)
    assert not any(isinstance(m, QuantLinear) for m in model.model.layers.modules())
    with torch.no_grad():
        hidden = original.model(ids).last_hidden_state  # the final norm's output
    x = hidden.reshape(-1, 64)
    expected, _, _ = gptq_quantize(original.lm_head.weight.detach(), 2 * x.t() @ x / len(x), method.grid)
    assert (model.lm_head.codes() == expected).float().mean() > 0.99  # one Hessian, summed per batch vs at once


def test_heads_that_cannot_be_quantized_are_refused_before_work():
    from tcompress.quantize import AWQ

    with pytest.raises(ValueError, match="no linear output head"):
        tc.apply(build("bert"), RTN(head=True, group_size=32))
    ids = example_inputs("llama", batch=2)["input_ids"]
    with pytest.raises(ValueError, match="stage of its own"):
        tc.apply(build("llama"), AWQ(head=True, group_size=32), ids)
