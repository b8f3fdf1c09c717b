import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.packed import QuantLinear, SparseLinear
from tcompress.prune import Magnitude, SparseGPT, Wanda, keep_mask, nm_keep_mask, parse_pattern
from tcompress.prune.sparsegpt import sparsegpt_prune

from helpers import TINY, build, example_inputs, hessian_case
from reference import sparsegpt as sparsegpt_reference


def pruned_linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def calib_of(family, n=4):
    inputs = example_inputs(family, batch=n)
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_sparsegpt_equals_the_literal_obs_reference(nm):
    w, _, h = hessian_case(out=12, n_in=48)
    h = h + 0.05 * torch.eye(48)  # well-conditioned: the reference inverts trailing blocks literally
    h[5, :] = h[:, 5] = 0  # the dead input again
    pruned = sparsegpt_prune(w.double(), h.double(), 0.5, nm=nm, block_size=16, damp=0.01)
    expected_weight, expected_kept = sparsegpt_reference.sparsegpt(w, h, 0.5, block_size=16, damp=0.01, nm=nm)
    assert torch.equal(pruned.kept, expected_kept)
    torch.testing.assert_close(pruned.weight, expected_weight, rtol=1e-9, atol=1e-9)
    assert torch.equal(pruned.weight != 0, pruned.kept)


def test_sparsegpt_beats_wanda_and_magnitude_on_the_layer_output_error():
    w, x, h = hessian_case(seed=2, out=64, n_in=96)
    linear = nn.Linear(96, 64, bias=False)
    linear.weight.data.copy_(w)
    magnitude = Magnitude(sparsity=0.5).apply(linear, None, "l").weight
    wanda_stats = Wanda().observe(Wanda().init_stats(linear), x)
    wanda = Wanda(sparsity=0.5).apply(linear, wanda_stats, "l").weight
    sparsegpt = sparsegpt_prune(w, h, 0.5, damp=0.01).weight  # in-sample error: the paper's light damping
    error = lambda q: (x @ (w - q).t()).pow(2).mean().item()  # noqa: E731
    assert error(sparsegpt) < 0.7 * error(wanda) < 0.7 * error(magnitude)


def test_masks_prune_exact_counts_even_with_ties():
    scores = torch.ones(4, 8)
    assert keep_mask(scores, 0.5, per_row=True).sum(dim=1).tolist() == [4] * 4
    assert keep_mask(scores, 0.3, per_row=False).sum().item() == 32 - int(0.3 * 32)
    kept = nm_keep_mask(torch.randn(6, 16), 2, 4)
    assert kept.view(6, 4, 4).sum(dim=2).eq(2).all()
    assert parse_pattern("4:8") == (4, 8)


@pytest.mark.parametrize("method", [Magnitude(sparsity=0.5), Wanda(sparsity=0.5), SparseGPT(sparsity=0.5),
                                    Magnitude(pattern="2:4"), Wanda(pattern="2:4"), SparseGPT(pattern="4:8")])
@pytest.mark.parametrize("family", sorted(TINY))
def test_every_method_prunes_every_family_exactly(method, family):
    model = build(family)
    blocks = tc.adapter(build(family)).blocks()
    tc.apply(model, method, calib_of(family), progress=False)
    pruned = pruned_linears(model)
    assert len(pruned) == len(blocks) * len(blocks[0].linears)
    for name, module in pruned.items():
        kept = module.kept()
        if method.nm is not None:
            n, m = method.nm
            assert kept.view(kept.shape[0], -1, m).sum(dim=2).eq(n).all(), name
        elif isinstance(method, Wanda):
            assert kept.sum(dim=1).eq(kept.shape[1] // 2).all(), name  # per output row
        else:
            assert kept.sum().item() == kept.numel() - kept.numel() // 2 or isinstance(method, SparseGPT), name
            assert abs(module.sparsity - 0.5) < 0.02, name
    with torch.no_grad():
        out = tc.engine.inputs.call_model(model, example_inputs(family))
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


def test_sparsegpt_keeps_the_model_closer_than_magnitude():
    inputs = example_inputs("llama", batch=8, seqlen=16)
    calib = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(8)]
    original = build("llama")
    with torch.no_grad():
        reference_logits = original(**inputs).logits
    errors = {}
    for method in (Magnitude(sparsity=0.5), SparseGPT(sparsity=0.5)):
        model = build("llama")
        tc.apply(model, method, calib, progress=False)
        with torch.no_grad():
            errors[method.name] = (model(**inputs).logits - reference_logits).pow(2).mean().item()
    assert errors["sparsegpt"] < errors["magnitude"]


def test_sparsegpt_joint_mode_gives_sparse_quantized_codes():
    model = build("llama")
    tc.apply(model, SparseGPT(pattern="2:4", bits=4, group_size=32), calib_of("llama"), progress=False)
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert quantized and not pruned_linears(model)
    for module in quantized:
        weight = module.dequantize()
        assert weight.view(weight.shape[0], -1, 4).ne(0).sum(dim=2).le(2).all()


def test_sparse_model_saves_smaller_and_loads_bit_exactly(tmp_path, tokenizer):
    model = build("llama")
    tc.save(model, tmp_path / "dense", tokenizer)
    tc.apply(model, Magnitude(sparsity=0.5))
    tc.save(model, tmp_path / "sparse", tokenizer)
    size = lambda folder: sum(f.stat().st_size for f in folder.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "sparse") < size(tmp_path / "dense")
    loaded, _ = tc.load(tmp_path / "sparse")
    for name, module in pruned_linears(model).items():
        other = loaded.get_submodule(name)
        assert isinstance(other, SparseLinear)
        assert torch.equal(other.weight, module.weight)
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_sparse_linear_is_dense_in_memory_and_stored_as_bitmask_and_values():
    layer = nn.Linear(576, 1536, bias=False)
    sparse = Magnitude(sparsity=0.5).apply(layer, None, "x")
    assert isinstance(sparse, nn.Linear) and torch.equal(sparse(torch.ones(2, 576)), nn.functional.linear(
        torch.ones(2, 576), sparse.weight))
    state = sparse.state_dict()
    assert set(state) == {"mask", "values"} and state["mask"].dtype == torch.uint8
    stored = sum(t.numel() * t.element_size() for t in state.values())
    assert stored == sparse.stored_bytes() == 1536 * 576 // 8 + (1536 * 576 // 2) * 4
    assert stored < 0.55 * 1536 * 576 * 4
    copy = SparseLinear(576, 1536, bias=False)
    copy.load_state_dict(state)
    assert torch.equal(copy.weight, sparse.weight)


def test_per_layer_sparsity_by_pattern():
    model = build("llama")
    tc.apply(model, Magnitude(sparsity=0.5, per_layer={"*.mlp.*": 0.75}))
    for name, module in pruned_linears(model).items():
        assert abs(module.sparsity - (0.75 if ".mlp." in name else 0.5)) < 0.01, name


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"sparsity must be a fraction in \[0, 1\)"), ({"sparsity": -0.1}, "sparsity must be"),
    ({"pattern": "4:4"}, "need 0 < N < M"), ({"pattern": "5:4"}, "need 0 < N < M"), ({"pattern": "2-4"}, "N:M"),
    ({"pattern": "2:4", "sparsity": 0.7}, "contradicts pattern"),
    ({"per_layer": {"*.mlp.*": 1.5}}, r"per_layer\['\*.mlp.\*'\]"),
])
def test_bad_pruning_settings_are_refused_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Wanda(**kwargs)


def test_pruning_needs_data_and_a_fitting_pattern_before_any_work():
    model = build("llama")
    with pytest.raises(ValueError, match="needs calibration data"):
        tc.apply(model, SparseGPT())
    with pytest.raises(ValueError, match="multiple of 64, got 96"):
        tc.apply(model, Magnitude(pattern="16:64", include=("*.mlp.down_proj",)))  # down_proj's input is 96 wide
    assert not pruned_linears(model)
