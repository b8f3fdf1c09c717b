"""Broken checkpoints get a clear error naming the file, from Python and from the CLI (exit
code 2); `tc.save` records the sha256 of every file and `verify=True` notices a changed byte."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

import tcompress as tc
from tcompress.checkpoint import RECORD_FILE
from tcompress.cli import main
from tcompress.models import CheckpointError

from helpers import build


@pytest.fixture(scope="module", params=["packed", "float"])
def saved(request, tmp_path_factory):
    model = build("llama")
    if request.param == "packed":
        tc.apply(model, tc.quantize.RTN(bits=4, group_size=32), progress=False)
    return tc.save(model, tmp_path_factory.mktemp(request.param) / "model")


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "copy")


def refused(folder, match: str, capsys, verify: bool = False) -> None:
    with pytest.raises(CheckpointError, match=match):
        tc.load(folder, processor=False, verify=verify)
    assert main(["-q", "info", str(folder), *(["--verify"] if verify else [])]) == 2
    err = capsys.readouterr().err
    assert "tcompress info: error:" in err and "Traceback" not in err


def test_save_records_the_sha256_of_every_file(saved):
    record = json.loads((saved / RECORD_FILE).read_text())
    assert set(record["files"]) == {p.name for p in saved.iterdir()} - {RECORD_FILE}
    tc.load(saved, processor=False, verify=True)


def test_a_truncated_weight_file_is_named(folder, capsys):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(folder, r"model.safetensors': not a readable safetensors file", capsys)


def test_a_corrupted_header_is_named(folder, capsys):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    refused(folder, r"model.safetensors': not a readable safetensors file", capsys)


def test_a_folder_without_weights_is_refused(folder, capsys):
    (folder / "model.safetensors").unlink()
    refused(folder, "no weight files", capsys)


def test_a_flipped_byte_in_the_tensors_is_caught_by_verify(folder, capsys):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    tc.load(folder, processor=False)  # safetensors carries no checksum: it loads
    refused(folder, r"model.safetensors': its sha256 differs", capsys, verify=True)


def test_a_config_that_does_not_fit_the_tensors_is_refused(folder, capsys):
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    refused(folder, "do not fit|other shapes than config.json gives|do not describe one model", capsys)


def test_a_missing_tensor_is_refused_not_initialised_at_random(folder, capsys):
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    del tensors[next(key for key in tensors if "up_proj" in key)]
    save_file(tensors, weights, metadata={"format": "pt"})
    refused(folder, "missing|does not match its tcompress.json", capsys)


def test_a_corrupted_record_is_named(folder, capsys):
    (folder / RECORD_FILE).write_text("{not json")
    refused(folder, "tcompress.json': not readable JSON", capsys)


def test_verify_needs_recorded_digests(folder, capsys):
    record = json.loads((folder / RECORD_FILE).read_text())
    del record["files"]
    (folder / RECORD_FILE).write_text(json.dumps(record))
    refused(folder, "records no file digests", capsys, verify=True)
