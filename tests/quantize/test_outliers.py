import json

import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.kernels import ops
from tcompress.packed import QuantLinear
from tcompress.quantize import RTN, Outliers, outlier_report

from helpers import build, example_inputs, sqnr_db


def llama_calibration(n=4):
    ids = example_inputs("llama", batch=n)["input_ids"]
    return ids, list(ids.split(1))


def block0_absmax(model, calib):
    """max |x| per input channel of every linear of block 0, over the calibration batches, by hand."""
    seen = {}
    linears = tc.adapter(model).blocks()[0].linears
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in linears.items()]
    with torch.no_grad():
        for batch in calib:
            model(batch)
    for hook in hooks:
        hook.remove()
    return {name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).abs().amax(dim=0) for name, xs in seen.items()}


@pytest.fixture(scope="module")
def kept_llama():
    """A tiny llama with outliers kept above the 90th percentile of q_proj's input maxima."""
    model, original = build("llama"), build("llama")
    _, calib = llama_calibration()
    absmax = block0_absmax(original, calib)
    threshold = torch.quantile(absmax["model.layers.0.self_attn.q_proj"], 0.9).item()
    tc.apply(model, Outliers(threshold=threshold), calib, progress=False)
    return model, original, absmax, threshold


def test_chosen_channels_match_the_threshold_on_the_calibration_inputs(kept_llama):
    model, _, absmax, threshold = kept_llama
    assert len(absmax) == 7
    for name, channel_max in absmax.items():
        module = model.get_submodule(name)
        expected = torch.nonzero(channel_max > threshold).flatten()
        kept = module.outlier_index if module.outliers else torch.zeros(0, dtype=torch.long)
        assert torch.equal(kept.long(), expected), name
    assert model.get_submodule("model.layers.0.self_attn.q_proj").outliers == 7  # 10% of 64, rounded up


def test_kept_columns_are_the_original_fp16_weights_and_zero_in_the_codes(kept_llama):
    model, original, _, _ = kept_llama
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear) or not module.outliers:
            continue
        index = module.outlier_index.long()
        weight = original.get_submodule(name).weight.detach()
        assert module.outlier_weight.dtype == torch.float16 and module.outlier_index.dtype == torch.int32
        assert torch.equal(module.outlier_weight, weight[:, index].half())
        assert torch.equal(module.codes()[:, index].float(), module.zeros.float().expand(-1, len(index)))
        assert torch.equal(module.dequantize()[:, index], module.outlier_weight.float())
        checked += 1
    assert checked >= 5


def test_forward_adds_the_float_columns_to_the_quantized_part(kept_llama, monkeypatch):
    monkeypatch.setattr(ops, "GEMV_ACTIVATIONS", "float")  # few tokens: the exact float products
    model, _, _, _ = kept_llama
    module = model.get_submodule("model.layers.0.self_attn.q_proj")
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    quantized = module.dequantize().index_fill(1, module.outlier_index.long(), 0)
    expected = x @ quantized.t() + x[..., module.outlier_index.long()] @ module.outlier_weight.float().t()
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module(x), x @ module.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_report_counts_channels_and_bytes(kept_llama):
    model, _, absmax, threshold = kept_llama
    rows = {row["module"]: row for row in outlier_report(model)}
    assert len(rows) == 14
    row = rows["model.layers.0.self_attn.q_proj"]
    module = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert row["channels"] == int((absmax["model.layers.0.self_attn.q_proj"] > threshold).sum()) == module.outliers
    assert row["extra_bytes"] == module.outliers * 4 + module.out_features * module.outliers * 2
    codes_only = module.qweight.numel() + module.scales.numel() * 2 + module.zeros.numel() * 2
    assert module.nbytes() == codes_only + row["extra_bytes"]
    assert all(r["extra_bytes"] == 0 for r in rows.values() if r["channels"] == 0)


def test_kept_layers_save_and_load_bit_exactly(kept_llama, tmp_path):
    model, _, _, _ = kept_llama
    tc.save(model, tmp_path / "q")
    loaded, _ = tc.load(tmp_path / "q")
    layouts = json.loads((tmp_path / "q" / "tcompress.json").read_text())["modules"]
    assert layouts["model.layers.0.self_attn.q_proj"]["outliers"] == 7
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_keeping_an_outlier_channel_beats_plain_rounding():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    batches = [torch.randn(16, 64) for _ in range(5)]
    for x in batches:
        x[:, 7] *= 50
    x, expected = batches[4], layer(batches[4]).detach()
    plain = RTN(bits=4, group_size=None).apply(layer, None, "0")
    model = nn.Sequential(layer)
    tc.apply(model, Outliers(bits=4, threshold=10.0), batches[:4], progress=False)
    assert model[0].outlier_index.tolist() == [7]
    with torch.no_grad():
        assert sqnr_db(expected, model[0](x)) > sqnr_db(expected, plain(x)) + 6


def test_nothing_above_the_threshold_is_plain_round_to_nearest():
    model, plain = build("llama"), build("llama")
    _, calib = llama_calibration(n=2)
    tc.apply(model, Outliers(threshold=1e6), calib, progress=False)
    tc.apply(plain, RTN(bits=8, group_size=None))
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            assert module.outliers == 0 and module.outlier_index is None and "outliers" not in repr(module)
            assert torch.equal(module.qweight, plain.get_submodule(name).qweight), name
    assert all(row["channels"] == 0 and row["extra_bytes"] == 0 for row in outlier_report(model))


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0}, "threshold must be a positive number"), ({"threshold": -1.0}, "threshold must be"),
    ({"threshold": float("nan")}, "threshold must be"), ({"threshold": float("inf")}, "threshold must be"),
    ({"threshold": True}, "threshold must be"), ({"threshold": "6"}, "threshold must be"),
    ({"search": "hqq"}, "search='hqq'"), ({"bits": 5}, "bits must be one of"),
])
def test_bad_settings_are_refused_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Outliers(**kwargs)


def test_outliers_need_calibration_data_before_any_work():
    model = build("llama")
    with pytest.raises(ValueError, match="'outliers' needs calibration data"):
        tc.apply(model, Outliers())
    with pytest.raises(ValueError, match="threshold must be"):
        tc.apply(model, {"method": "outliers", "threshold": -2})
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
