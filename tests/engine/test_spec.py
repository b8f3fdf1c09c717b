"""The text form of a method config, and the method protocol's registration rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tcompress.engine import BlockMethod, LinearMethod, ModelMethod, method_text, option, parse_method, register
from tcompress.prune import SparseGPT, Structured, Wanda
from tcompress.quantize import GPTQ, RTN, SmoothQuant


@pytest.mark.parametrize("text, expected", [
    ("gptq", GPTQ()),
    ("gptq:bits=3,group_size=channel,damp=0.05", GPTQ(bits=3, group_size=None, damp=0.05)),
    ("rtn:symmetric=true,include=*q_proj+*k_proj", RTN(symmetric=True, include=("*q_proj", "*k_proj"))),
    ("smoothquant:activations=false", SmoothQuant(activations=False)),
    ("sparsegpt:pattern=2:4,bits=4", SparseGPT(pattern="2:4", bits=4)),
    ("wanda:per_layer=*mlp*=0.6+*attn*=0.4", Wanda(per_layer={"*mlp*": 0.6, "*attn*": 0.4})),
    ("structured:target_params=0.75,parts=heads+blocks", Structured(target_params=0.75, parts=("heads", "blocks"))),
])
def test_the_text_form_reads_each_field_by_its_type_and_writes_back(text, expected):
    assert parse_method(text) == expected
    assert parse_method(method_text(expected)) == expected


def test_the_text_form_names_only_what_differs_from_the_defaults():
    assert method_text(GPTQ()) == "gptq"
    assert method_text(GPTQ(bits=3, group_size=None)) == "gptq:bits=3,group_size=channel"


@pytest.mark.parametrize("text, match", [
    ("nosuch:bits=4", "unknown method 'nosuch'"),
    ("gptq:bits", "expected field=value"),
    ("gptq:bits=four", "bits: expected an integer, got 'four'"),
    ("gptq:nosuch=1", "has no field 'nosuch'"),
    ("gptq:search=best", "search: expected one of"),
    ("gptq:symmetric=maybe", "expected true or false"),
    ("gptq:bits=5", "bits must be one of"),
    ("structured:parts=heads+wings,target_params=0.5", "parts: expected one of heads, channels, blocks, got .wings."),
])
def test_bad_text_is_refused_naming_the_field(text, match):
    with pytest.raises(ValueError, match=match):
        parse_method(text)


def test_descriptions_say_the_setting_in_a_few_words():
    assert GPTQ(bits=3, damp=0.01).describe() == "gptq W3 g64 damp=0.01"
    assert SparseGPT(pattern="2:4", bits=4, group_size=32).describe() == "sparsegpt 2:4 W4 g32"
    assert SmoothQuant(activations=False).describe() == "smoothquant W8 alpha=0.5"
    assert Structured(target_params=0.75).describe() == "structured 75% params, heads+channels"


def test_register_refuses_a_method_of_two_shapes_or_no_kind():
    @dataclass(frozen=True)
    class Both(LinearMethod, BlockMethod):
        name = "both"
        kind = "quantize"

    with pytest.raises(TypeError, match="exactly one of LinearMethod, BlockMethod and ModelMethod"):
        register(Both)

    @dataclass(frozen=True)
    class Kindless(ModelMethod):
        name = "kindless"

    with pytest.raises(TypeError, match="kind must be one of"):
        register(Kindless)

    @dataclass(frozen=True)
    class Dataless(BlockMethod):
        name = "dataless"
        kind = "quantize"
        needs_data = False

    with pytest.raises(TypeError, match="needs data"):
        register(Dataless)


def test_register_refuses_a_name_that_is_taken():
    @dataclass(frozen=True)
    class Other(ModelMethod):
        name = "gptq"
        kind = "quantize"
        level: int = option(1, "a level")

    with pytest.raises(TypeError, match="'gptq' is taken by GPTQ"):
        register(Other)
