"""Every registered method, on every tiny family: applied (or refused with a clear message
before any work), named in the record, its config round-tripped through `to_dict` /
`method_from` and through its text form, and the result saved and loaded back bit-exactly.
A method registered without an entry in `EXAMPLES` fails here."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import tcompress as tc
from tcompress.cli import main
from tcompress.engine import METHODS, method_from, method_text, parse_method, shape_of
from tcompress.prune import Magnitude, SparseGPT, Structured, Wanda
from tcompress.quantize import AWQ, GPTQ, HQQ, RTN, EmbeddingQuant, Outliers, SmoothQuant, ViTQuant

from helpers import TINY, VOCAB, build, example_inputs

ALL = tuple(TINY)
LANGUAGE = ("llama", "gemma3", "opt", "gpt2", "bert")
NOT_VIT = "vit-ptq quantizes ViT/DeiT classifiers"
EXAMPLES = {  # name -> (config, {family: None (applies) or the refusal it gives})
    "rtn": (RTN(bits=4, group_size=32), {}),
    "hqq": (HQQ(bits=3, group_size=32), {}),
    "gptq": (GPTQ(bits=4, group_size=32), {}),
    "awq": (AWQ(bits=4, group_size=32, grid_points=4, search_samples=2), {}),
    "smoothquant": (SmoothQuant(alpha=0.6), {}),
    "outliers": (Outliers(threshold=1.0), {}),
    "embeddings": (EmbeddingQuant(bits=8, group_size=32), {"vit": "input embeddings must be an nn.Embedding"}),
    "vit-ptq": (ViTQuant(bits=4, act_bits=8), {family: NOT_VIT for family in LANGUAGE}),
    "magnitude": (Magnitude(sparsity=0.5), {}),
    "wanda": (Wanda(pattern="2:4"), {}),
    "sparsegpt": (SparseGPT(sparsity=0.5, bits=4, group_size=32), {}),
    "structured": (Structured(target_params=0.8, parts=("channels",)), {}),
}
CASES = [(name, family) for name in sorted(EXAMPLES) for family in ALL]


def calibration(family: str):
    generator = torch.Generator().manual_seed(5)
    if family == "vit":
        return torch.randn(4, 1, 28, 28, generator=generator)
    return torch.randint(0, VOCAB, (4, 16), generator=generator)


def outputs(model, family: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**example_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_every_registered_method_has_an_example():
    assert set(EXAMPLES) == set(METHODS), "add each registered method to EXAMPLES (and its refusals)"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_has_one_shape_a_kind_and_help_for_every_field(name):
    cls = METHODS[name]
    shape_of(cls)  # exactly one of the three shapes
    assert cls.kind in tc.engine.KINDS and cls.summary()
    undocumented = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert not undocumented, f"{name}: fields without help (declare them with engine.option): {undocumented}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_config_round_trips_through_its_dict_and_its_text(name):
    config = EXAMPLES[name][0]
    assert method_from(config.to_dict()) == config
    assert parse_method(method_text(config)) == config
    assert config.describe().startswith(name)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_cli_offers_every_registered_method(name, capsys):
    with pytest.raises(SystemExit):
        main([METHODS[name].kind, "--help"])
    assert re.search(rf"^\s+{re.escape(name)}\s", capsys.readouterr().out, re.M)


@pytest.mark.parametrize("name, family", CASES)
def test_applies_records_and_saves_bit_exactly_or_refuses_clearly(name, family, tmp_path):
    config, refusals = EXAMPLES[name]
    model = build(family)
    if family in refusals:
        before = {key: value.clone() for key, value in model.state_dict().items()}
        with pytest.raises(ValueError, match=refusals[family]):
            tc.apply(model, config, calibration(family), progress=False)
        assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
        return
    tc.apply(model, config, calibration(family), progress=False)
    assert tc.checkpoint.record_of(model).applied[-1] == config.to_dict()
    expected = outputs(model, family)
    tc.save(model, tmp_path / "saved")
    loaded, _ = tc.load(tmp_path / "saved")
    assert [m["method"] for m in loaded.tc_record.applied] == [name]
    torch.testing.assert_close(outputs(loaded, family), expected, rtol=0, atol=0)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[key], loaded_state[key]) for key in state)
