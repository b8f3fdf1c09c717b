import pytest
import yaml

import tcompress as tc
from tcompress.cli import main
from tcompress.packed import QuantLinear
from tcompress.quantize import GPTQ

from helpers import build


def test_recipe_runs_its_stages_in_order_on_shared_calibration(tmp_path, tokenizer):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"calibration": {"n": 4, "seqlen": 32},
                                    "stages": [{"method": "gptq", "bits": 4, "group_size": 32, "exclude": ["*down*"]},
                                               {"method": "rtn", "bits": 8, "group_size": None}]}))
    recipe = tc.recipe.load(path)
    assert recipe.stages[0] == GPTQ(bits=4, group_size=32, exclude=("*down*",))
    assert recipe.calibration == {"source": "pydoc", "n": 4, "seqlen": 32, "seed": 0}
    model = build("llama")
    recipe.run(model, tokenizer, progress=False)
    assert model.model.layers[0].self_attn.q_proj.grid.bits == 4
    assert model.model.layers[0].mlp.down_proj.grid.bits == 8  # left by stage 0, taken by stage 1
    assert [a["method"] for a in tc.checkpoint.record_of(model).applied] == ["gptq", "rtn"]


def test_the_shipped_recipes_parse():
    from pathlib import Path

    recipes = Path(__file__).parent.parent / "recipes"
    assert tc.recipe.load(recipes / "gptq-w4g64.yaml").stages == (GPTQ(bits=4, group_size=64),)
    mixed = tc.recipe.load(recipes / "mixed-precision.yaml").stages
    assert mixed == (GPTQ(bits=3, group_size=64, include=("*.mlp.*",)), GPTQ(bits=4, group_size=64))


@pytest.mark.parametrize("spec, match", [
    ({"stages": []}, "non-empty list"),
    ({"steps": [{"method": "rtn"}]}, "'stages' list"),
    ({"stages": [{"method": "nope"}]}, "stage 0: unknown method 'nope'"),
    ({"stages": [{"method": "rtn", "bits": 5}]}, "stage 0: bits must be one of"),
    ({"stages": [{"method": "rtn", "bitz": 4}]}, "stage 0: method 'rtn' has no field"),
    ({"stages": ["rtn"]}, "stage 0 must be a mapping"),
    ({"stages": [{"method": "rtn"}], "calibration": {"samples": 3}}, "unknown field"),
])
def test_bad_recipes_fail_before_any_work(spec, match):
    with pytest.raises(ValueError, match=match):
        tc.recipe.parse(spec)


def test_cli_run(tmp_path, tokenizer, capsys):
    folder = tmp_path / "tiny"
    tc.save(build("llama"), folder, tokenizer)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - {method: hqq, bits: 4, group_size: 32}\n")
    assert main(["-q", "run", str(recipe), str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "applied hqq" in capsys.readouterr().out
    assert isinstance(tc.load(tmp_path / "out")[0].model.layers[1].mlp.up_proj, QuantLinear)
    assert main(["-q", "run", str(tmp_path / "none.yaml"), str(folder), "--out", str(tmp_path / "o2")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
