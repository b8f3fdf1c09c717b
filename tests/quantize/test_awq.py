import pytest
import torch

import tcompress as tc
from tcompress.packed import QuantLinear
from tcompress.packed.grid import Grid, fake_quantize, scale_zero, value_range
from tcompress.quantize import AWQ, RTN
from tcompress.quantize.awq import clip_search

from helpers import Stack, build, example_inputs, relative_error


def calibration(family, n=4, seqlen=32):
    inputs = example_inputs(family, batch=n, seqlen=seqlen)
    return inputs, [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]



def test_without_scales_or_clipping_awq_is_round_to_nearest():
    _, calib = calibration("llama")
    awq, rtn = build("llama"), build("llama")
    tc.apply(awq, AWQ(bits=3, group_size=32, grid_points=1, clip=False), calib, progress=False)
    tc.apply(rtn, RTN(bits=3, group_size=32))
    for name, module in rtn.named_modules():
        if isinstance(module, QuantLinear):
            assert torch.equal(awq.get_submodule(name).codes(), module.codes()), name


@pytest.mark.parametrize("family", ["llama", "gemma3", "opt", "gpt2"])
def test_awq_beats_round_to_nearest_at_3_bits(family):
    inputs, calib = calibration(family)
    reference, rtn, awq = build(family), build(family), build(family)
    tc.apply(rtn, RTN(bits=3, group_size=32))
    tc.apply(awq, AWQ(bits=3, group_size=32), calib, progress=False)
    assert relative_error(awq, reference, inputs) < 0.8 * relative_error(rtn, reference, inputs)


def test_clip_search_picks_each_groups_range_by_its_output_error():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, 48, generator=generator)
    x = torch.randn(300, 48, generator=generator) * torch.linspace(0.2, 3, 48)
    grid = Grid(3, 16)
    scale, zero = clip_search(w, x, grid, max_shrink=0.5)
    for row in range(6):
        for g in range(3):
            cols = slice(16 * g, 16 * (g + 1))
            wg, xg = w[row : row + 1, cols], x[:, cols]
            low, high = value_range(wg, grid)
            errors = []
            for i in range(10):  # literal: each shrink factor, the group's output error over all tokens
                s, z = scale_zero(low * (1 - i / 20), high * (1 - i / 20), grid)
                s, z = s.half().float(), z.half().float()
                errors.append(((xg @ (fake_quantize(wg, s[:, None], z[:, None], grid.maxq) - wg).t()) ** 2).sum())
            best = int(torch.stack(errors).argmin())
            expected, _ = scale_zero(low * (1 - best / 20), high * (1 - best / 20), grid)
            assert scale[row, g] == expected.half().float()[0], (row, g)


def test_scales_with_nowhere_to_fold_stay_as_input_scales_and_round_trip(tmp_path, tokenizer):
    inputs, calib = calibration("llama")
    model, reference = build("llama"), build("llama")
    tc.apply(model, AWQ(bits=4, group_size=32), calib, progress=False)
    o_proj = model.model.layers[0].self_attn.o_proj  # grouped-query attention: no v row per o input
    q_proj = model.model.layers[0].self_attn.q_proj  # folded into the norm instead
    assert o_proj.input_scale is not None and q_proj.input_scale is None
    assert not torch.all(o_proj.input_scale == 1)
    assert relative_error(model, reference, inputs) < 0.01
    tc.save(model, tmp_path / "awq", tokenizer)
    loaded, _ = tc.load(tmp_path / "awq")
    assert torch.equal(loaded.model.layers[0].self_attn.o_proj.input_scale, o_proj.input_scale)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_awq_runs_on_encoders(family):
    inputs, calib = calibration(family)
    model, reference = build(family), build(family)
    tc.apply(model, AWQ(bits=8, group_size=32), calib, progress=False)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 12
    assert relative_error(model, reference, inputs) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    ({"grid_points": 0}, "grid_points"), ({"max_shrink": 1.0}, "max_shrink"), ({"search_samples": 0}, "search_samples"),
    ({"bits": 1}, "bits must be one of"),
])
def test_bad_awq_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AWQ(**kwargs)


def test_awq_needs_calibration_data():
    with pytest.raises(ValueError, match="needs calibration data"):
        tc.apply(build("llama"), AWQ())


def test_scales_only_keeps_the_model_float_and_close_then_gptq_rounds_it():
    from tcompress.quantize import GPTQ

    inputs, calib = calibration("llama")
    model, reference = build("llama"), build("llama")
    tc.apply(model, AWQ(bits=3, group_size=32, scales_only=True), calib, progress=False)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    norm = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, reference.model.layers[0].input_layernorm.weight)  # scales folded
    assert relative_error(model, reference, inputs) < 0.05  # only the clipping changed the function
    tc.apply(model, GPTQ(bits=3, group_size=32), calib, progress=False)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14


def test_a_model_of_no_known_family_gets_input_scales_per_linear():
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(64, 8) * torch.linspace(0.1, 4, 8)
    tc.apply(model, AWQ(bits=4, group_size=16), [x[:32], x[32:]], progress=False)
    quantized = [m for m in model.layers.modules() if isinstance(m, QuantLinear)]
    assert quantized and all(m.input_scale is not None for m in quantized)
