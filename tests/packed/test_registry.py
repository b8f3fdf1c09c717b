"""The packed formats register themselves by name; loading a record that names an unknown one
says which."""

from __future__ import annotations

import json

import pytest
from torch import nn

import tcompress as tc
from tcompress.packed import FORMATS, ActQuantizer, Int8Linear, QuantEmbedding, QuantLinear, SparseLinear
from tcompress.packed.registry import register_format

from helpers import build


def test_every_packed_module_is_registered_by_its_format():
    assert FORMATS == {cls.format: cls for cls in (QuantLinear, Int8Linear, SparseLinear, ActQuantizer,
                                                    QuantEmbedding)}


def test_a_format_needs_a_name_a_layout_and_a_free_name():
    class Nameless(nn.Module):
        pass

    with pytest.raises(TypeError, match="needs `format`, `layout\\(\\)` and `from_layout\\(\\)`"):
        register_format(Nameless)

    class Clash(QuantLinear):
        format = "sparse_linear"

    with pytest.raises(TypeError, match="'sparse_linear' is taken by SparseLinear"):
        register_format(Clash)


def test_a_record_naming_an_unknown_format_is_refused(tmp_path):
    model = build("llama")
    tc.apply(model, tc.quantize.RTN(bits=4, group_size=32), progress=False)
    folder = tc.save(model, tmp_path / "m")
    record = json.loads((folder / "tcompress.json").read_text())
    name = next(iter(record["modules"]))
    record["modules"][name]["format"] = "int2_linear"
    (folder / "tcompress.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"module '{name}': unknown packed format 'int2_linear'"):
        tc.load(folder)
