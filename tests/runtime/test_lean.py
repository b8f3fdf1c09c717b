"""Models loaded for decoding without transformers' modeling code decode exactly what the
same folder loaded by `tc.load` decodes (float, tied, packed with a shared embedding table,
Qwen2 biases, Qwen3 norms, Llama 3 rotary scaling); the process never imports a transformers
model class; folders the loader does not build are refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

import tcompress as tc
from tcompress.kernels import ops
from tcompress.runtime import Decoder
from tcompress.runtime.lean import load_for_decoding

from helpers import byte_tokenizer, tiny_llama

SMALL = dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def quantized_tied():
    model = tiny_llama(vocab_size=257, tie_word_embeddings=True).eval()
    tc.apply(model, tc.quantize.RTN(bits=4, group_size=32))
    tc.apply(model, tc.quantize.RTN(bits=8, group_size=32, head=True, include=("lm_head",)))
    tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=32))
    return model


SUBJECTS = {
    "llama": lambda: tiny_llama(vocab_size=257).eval(),
    "llama-tied": lambda: tiny_llama(vocab_size=257, tie_word_embeddings=True).eval(),
    "llama-w4-shared-table": quantized_tied,
    "llama3-rope": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, rope_parameters=LLAMA3_ROPE)).eval(),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL)).eval(),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SMALL, head_dim=16)).eval(),
}


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_the_lean_model_decodes_what_the_full_model_decodes(name, tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "GEMV_ACTIVATIONS", "float")  # a packed head as exact as the full forward's
    torch.manual_seed(0)
    model = SUBJECTS[name]()
    tc.save(model, tmp_path / "m", byte_tokenizer())
    full, _ = tc.load(tmp_path / "m")
    lean = load_for_decoding(tmp_path / "m")
    prompt = torch.randint(0, 257, (2, 70))  # past the Llama 3 original context: the scaled wavelengths matter
    decoders = Decoder(full, max_length=80, batch_size=2), Decoder(lean, max_length=80, batch_size=2)
    first = [d.prefill(prompt) for d in decoders]
    assert torch.equal(first[0], first[1])
    with torch.no_grad():
        torch.testing.assert_close(first[0], full(prompt).logits[:, -1], rtol=1e-4, atol=1e-4)
    token = first[0].argmax(-1)
    for _ in range(3):
        steps = [d.step(token) for d in decoders]
        assert torch.equal(steps[0], steps[1])
        token = steps[0].argmax(-1)
    prompt = prompt[:1, :9]
    assert torch.equal(lean.generate(prompt, max_new_tokens=5), Decoder(full, max_length=14).generate(prompt, 5))


def test_no_transformers_model_class_is_imported(tmp_path):
    tc.save(quantized_tied(), tmp_path / "m", byte_tokenizer())
    script = ("import sys, torch\n"
              "from tcompress.runtime import Decoder\n"
              "from tcompress.runtime.lean import load_for_decoding\n"
              f"model = load_for_decoding({str(tmp_path / 'm')!r})\n"
              "Decoder(model, max_length=16).generate(torch.tensor([[1, 2, 3]]), 4)\n"
              "print(sorted(m for m in sys.modules if m == 'transformers.modeling_utils'\n"
              "             or m.startswith('transformers.models.') and '.modeling_' in m and '.auto.' not in m))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_folders_it_does_not_build_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_for_decoding(tmp_path)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=257, n_embd=32, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2'; the lean loader builds llama"):
        load_for_decoding(tmp_path / "gpt2")
    model = tiny_llama(vocab_size=257)
    model.save_pretrained(tmp_path / "yarn")
    config = json.loads((tmp_path / "yarn" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (tmp_path / "yarn" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rotary embedding type 'yarn'"):
        load_for_decoding(tmp_path / "yarn")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(TypeError, match="runs through tcompress.runtime.Decoder"):
        load_for_decoding(tmp_path / "plain")(torch.tensor([[1]]))
