"""The static-cache decoder computes what the model's own forward computes (float and packed
4-bit models, grouped-query attention, Qwen3's per-head norms), and greedy generation matches
transformers' `generate` token for token; bad input is refused before any work."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import tcompress as tc
from tcompress.kernels import ops
from tcompress.runtime import Decoder

from helpers import build, tiny_gemma3, tiny_llama


def tiny_qwen3() -> transformers.PreTrainedModel:
    config = transformers.Qwen3Config(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=256)
    return transformers.Qwen3ForCausalLM(config)


def models():
    torch.manual_seed(0)
    llama = tiny_llama(vocab_size=257).eval()
    gemma = tiny_gemma3().eval()  # window 8: the 11-token prompt and the steps after it see only part of it
    gemma_w4 = tc.apply(copy.deepcopy(gemma), tc.quantize.RTN(bits=4, group_size=32), progress=False)
    tc.apply(gemma_w4, tc.quantize.RTN(bits=8, group_size=32, head=True, include=("lm_head",)), progress=False)
    tc.apply(gemma_w4, tc.quantize.EmbeddingQuant(bits=8, group_size=32), progress=False)  # reads the head's codes
    return {"llama": llama, "llama-w4": tc.apply(copy.deepcopy(llama), tc.quantize.RTN(bits=4, group_size=32)),
            "llama-w8-head": tc.apply(copy.deepcopy(llama), tc.quantize.RTN(bits=8, group_size=32, head=True)),
            "qwen3": tiny_qwen3().eval(), "gemma3": gemma, "gemma3-w4": gemma_w4}


@pytest.mark.parametrize("name", ["llama", "llama-w4", "llama-w8-head", "qwen3", "gemma3", "gemma3-w4"])
def test_prefill_and_steps_equal_the_full_forward(name, monkeypatch):
    monkeypatch.setattr(ops, "GEMV_ACTIVATIONS", "float")  # decode steps as exact as the full forward
    model = models()[name]
    torch.manual_seed(1)
    prompt, more = torch.randint(0, 257, (3, 11)), torch.randint(0, 257, (3, 6))
    decoder = Decoder(model, max_length=32, batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(decoder.prefill(prompt), model(prompt).logits[:, -1], rtol=1e-5, atol=1e-5)
        for i in range(more.shape[1]):
            logits = decoder.step(more[:, i])
            expected = model(torch.cat([prompt, more[:, : i + 1]], dim=1)).logits[:, -1]
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "llama-w4", "llama-w8-head", "qwen3"])
@pytest.mark.parametrize("activations", ["float", "int8"])
def test_the_one_call_step_equals_the_layer_by_layer_step(name, activations, monkeypatch):
    monkeypatch.setattr(ops, "GEMV_ACTIVATIONS", activations)
    model = models()[name]
    prompt = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(4))
    native, stepwise = Decoder(model, max_length=24, batch_size=2), Decoder(model, max_length=24, batch_size=2)
    assert native.native is not None
    stepwise.native = None
    token = native.prefill(prompt).argmax(-1)
    stepwise.prefill(prompt)
    for _ in range(6):
        ours, theirs = native.step(token), stepwise.step(token)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        token = ours.argmax(-1)
    torch.testing.assert_close(native.keys, stepwise.keys, rtol=1e-6, atol=1e-6)


def test_layers_the_one_call_step_cannot_run_keep_the_stepwise_path():
    model = models()["llama-w4"]
    model.model.layers[1].mlp.down_proj.input_scale = torch.ones(96, dtype=torch.float16)
    decoder = Decoder(model, max_length=16)
    assert decoder.native is None and decoder.c_steps


def test_greedy_generation_matches_transformers():
    model = models()["llama-w4"]
    prompt = torch.randint(0, 257, (2, 7), generator=torch.Generator().manual_seed(2))
    ours = Decoder(model, max_length=40, batch_size=2).generate(prompt, max_new_tokens=20)
    theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_a_decoder_can_start_over():
    model = models()["llama"]
    decoder = Decoder(model, max_length=16, batch_size=2)
    prompt = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(3))
    first = decoder.generate(prompt, 8)
    assert torch.equal(decoder.generate(prompt, 8), first)
    assert decoder.generate(prompt[:1], 4).shape == (1, 9)


def test_bad_input_is_refused():
    model = models()["llama"]
    decoder = Decoder(model, max_length=16, batch_size=2)
    with pytest.raises(ValueError, match="at most 2 sequences of 16 tokens"):
        decoder.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="exceed max_length=16"):
        decoder.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    decoder.prefill(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="reached max_length=16"):
        decoder.step(torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="serves llama, mistral, qwen2, qwen3, gemma3_text models; this is 'gpt2'"):
        Decoder(build("gpt2"))


def test_bench_runs_both_engines():
    model = models()["llama-w4"]
    settings = dict(batch_sizes=(1, 2), seqlen=8, new_tokens=3, repeats=1, warmup=0)
    for engine in ("hf", "tcompress"):
        report = tc.bench(model, tc.BenchSettings(**settings, engine=engine), disk=False, progress=False)
        assert [row.phase for row in report.rows] == ["prefill", "decode"] * 2
    with pytest.raises(ValueError, match="engine must be one of"):
        tc.BenchSettings(engine="vllm")
