"""Streaming: a model loaded with lazy=True compresses block by block from its files and is
written a shard a block, with exactly the tensors of the same run in memory."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import tcompress as tc
from tcompress.checkpoint.lazy import LazyModelError
from tcompress.models.loading import ModelSpecError

from helpers import VOCAB, tiny_gemma3, tiny_llama


def saved_tensors(folder):
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def calib():
    return torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(0))


def compress_both_ways(tmp_path, model, method, calib):
    tc.save(model, tmp_path / "source")
    in_memory, _ = tc.load(tmp_path / "source")
    tc.apply(in_memory, method, calib, progress=False)
    tc.save(in_memory, tmp_path / "in-memory")
    lazy, _ = tc.load(tmp_path / "source", lazy=True)
    assert any(p.is_meta for p in lazy.parameters())  # the blocks are not in memory
    tc.apply(lazy, method, calib, progress=False)
    tc.save(lazy, tmp_path / "streamed")
    return tmp_path / "in-memory", tmp_path / "streamed"


@pytest.mark.parametrize("case", ["gptq", "gptq-tied-head", "awq-gemma3", "rtn", "wanda"])
def test_streamed_run_saves_the_same_tensors_as_in_memory(tmp_path, calib, case):
    torch.manual_seed(0)
    model, method = {
        "gptq": (tiny_llama(num_hidden_layers=3), tc.quantize.GPTQ(bits=4, group_size=16)),
        "gptq-tied-head": (tiny_llama(tie_word_embeddings=True), tc.quantize.GPTQ(bits=3, group_size=16, head=True)),
        "awq-gemma3": (tiny_gemma3(), tc.quantize.AWQ(bits=4, group_size=16)),
        "rtn": (tiny_llama(), tc.quantize.RTN(bits=4, group_size=16)),
        "wanda": (tiny_llama(), tc.prune.Wanda(sparsity=0.5)),
    }[case]
    in_memory, streamed = compress_both_ways(tmp_path, model, method, calib)
    assert_same_tensors(saved_tensors(in_memory), saved_tensors(streamed))
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == model.config.num_hidden_layers + 1  # a shard a block, one more
    a, b = tc.load(in_memory)[0], tc.load(streamed)[0]
    ids = calib[:2]
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_sharded_float_output_loads_in_plain_transformers(tmp_path, calib):
    torch.manual_seed(0)
    model = tiny_llama(tie_word_embeddings=True)
    tc.save(model, tmp_path / "source")
    lazy, _ = tc.load(tmp_path / "source", lazy=True)
    tc.save(lazy, tmp_path / "copy")  # no method: every block read from the source as it is
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert torch.equal(plain(calib).logits, model(calib).logits)
    loaded, _ = tc.load(tmp_path / "copy", verify=True)
    assert torch.equal(loaded(calib).logits, model(calib).logits)


def test_two_methods_in_turn_stream_from_the_spool(tmp_path, calib):
    torch.manual_seed(0)
    tc.save(tiny_llama(), tmp_path / "source")
    steps = [tc.prune.Wanda(sparsity=0.25), tc.quantize.GPTQ(bits=4, group_size=16, include=("*mlp*",))]
    outputs = {}
    for lazy in (False, True):
        model, _ = tc.load(tmp_path / "source", lazy=lazy)
        for method in steps:
            tc.apply(model, method, calib, progress=False)
        tc.save(model, tmp_path / f"lazy={lazy}")
        outputs[lazy] = saved_tensors(tmp_path / f"lazy={lazy}")
    assert_same_tensors(outputs[False], outputs[True])


def test_whole_model_work_refuses_a_lazy_model_clearly(tmp_path, calib, tokenizer):
    tc.save(tiny_llama(), tmp_path / "source")
    lazy, _ = tc.load(tmp_path / "source", lazy=True)
    with pytest.raises(LazyModelError, match="structured.*whole model.*lazy=True"):
        tc.apply(lazy, tc.prune.Structured(target_params=0.75), calib, progress=False)
    with pytest.raises(LazyModelError, match="evaluation.*lazy=True"):
        tc.eval.perplexity(lazy, tokenizer, calib, seqlen=24)


def test_lazy_refuses_what_it_cannot_stream(tmp_path, calib):
    tc.save(tiny_llama(), tmp_path / "source")
    packed, _ = tc.load(tmp_path / "source")
    tc.apply(packed, tc.quantize.RTN(bits=4, group_size=16))
    tc.save(packed, tmp_path / "packed")
    with pytest.raises(ModelSpecError, match="packed modules.*without lazy"):
        tc.load(tmp_path / "packed", lazy=True)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSpecError, match="safetensors folders"):
        tc.load(tmp_path / "model.gguf", lazy=True)
    with pytest.raises(ValueError, match="device_map"):
        tc.load(tmp_path / "source", lazy=True, device_map="auto")


def test_a_failed_streamed_run_leaves_source_and_earlier_output_untouched(tmp_path, calib):
    tc.save(tiny_llama(), tmp_path / "source")
    before = saved_tensors(tmp_path / "source")
    lazy, _ = tc.load(tmp_path / "source", lazy=True)
    tc.save(lazy, tmp_path / "out")
    earlier = saved_tensors(tmp_path / "out")
    bad = torch.full((2, 8), VOCAB + 5)  # token ids past the vocabulary: the embedding lookup fails
    with pytest.raises(IndexError):
        tc.apply(lazy, tc.quantize.GPTQ(bits=4, group_size=16), bad, progress=False)
    assert_same_tensors(saved_tensors(tmp_path / "source"), before)
    assert_same_tensors(saved_tensors(tmp_path / "out"), earlier)
    assert all(p.is_meta for name, p in lazy.named_parameters() if ".layers." in name)  # nothing left in memory
