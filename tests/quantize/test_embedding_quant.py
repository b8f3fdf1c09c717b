"""Quantized input embeddings: lookups decode exactly the quantized table, a tied head is
untied and stays float, save/load is bit-exact and smaller, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import tcompress as tc
from tcompress.export.plain import export_hf
from tcompress.packed.embedding import QuantEmbedding
from tcompress.packed.grid import Grid, quantize_weight

from helpers import build, byte_tokenizer, tiny_llama


def tied_llama():
    torch.manual_seed(0)
    return tiny_llama(vocab_size=257, tie_word_embeddings=True).eval()


@pytest.mark.parametrize("bits, group", [(8, 64), (4, 32), (8, None)])
def test_lookup_decodes_the_quantized_table(bits, group):
    table = nn.Embedding(50, 64)
    module = QuantEmbedding.from_embedding(table, Grid(bits, group))
    codes, scales, zeros = quantize_weight(table.weight.detach(), Grid(bits, group))
    size = group or 64
    expected = (codes.float() - zeros.half().float().repeat_interleave(size, 1)) * scales.half().float().repeat_interleave(size, 1)
    assert torch.equal(module.weight, expected)
    step = scales.max().item()
    assert (module.weight - table.weight).abs().max().item() < 0.51 * step + 1e-3
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    assert torch.equal(module(ids), module.weight[ids])


def test_a_tied_head_is_untied_and_stays_float(tmp_path):
    model = tied_llama()
    head = model.lm_head.weight.detach().clone()
    tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=32))
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    assert torch.equal(model.lm_head.weight, head) and not model.config.tie_word_embeddings
    ids = torch.randint(0, 257, (2, 12))
    logits = model(ids).logits
    tc.save(model, tmp_path / "m", byte_tokenizer())
    loaded, _ = tc.load(tmp_path / "m")
    assert torch.equal(loaded.model.embed_tokens.qweight, model.model.embed_tokens.qweight)
    assert torch.equal(loaded(ids).logits, logits)
    assert model.model.embed_tokens.nbytes() < 257 * 64 * 4 / 3
    export_hf(model, byte_tokenizer(), tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    torch.testing.assert_close(plain(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
    model = tied_llama()
    with pytest.raises(ValueError, match="bits must be one of"):
        tc.quantize.EmbeddingQuant(bits=5)
    with pytest.raises(ValueError, match="group"):
        tc.apply(model, tc.quantize.EmbeddingQuant(group_size=48))
    assert isinstance(model.model.embed_tokens, nn.Embedding)  # untouched
    tc.apply(model, tc.quantize.EmbeddingQuant())
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 257\)"):
        model(torch.tensor([[1, 300]]))
    vit = build("vit")
    with pytest.raises(ValueError, match="must be an nn.Embedding"):
        tc.apply(vit, tc.quantize.EmbeddingQuant())


def test_a_table_rounded_like_the_head_reads_the_heads_codes(tmp_path):
    model = tied_llama()
    separate = tied_llama()
    for m in (model, separate):
        tc.apply(m, tc.quantize.RTN(bits=8, group_size=32, head=True, include=("lm_head",)))
    tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=32))
    tc.apply(separate, tc.quantize.EmbeddingQuant(bits=8, group_size=32, symmetric=True))  # other codes: a copy
    shared = model.model.embed_tokens
    assert shared.codes_from == "lm_head" and shared.nbytes() == 0
    assert shared.qweight is model.lm_head.qweight and not list(shared.buffers())
    assert separate.model.embed_tokens.codes_from is None and separate.model.embed_tokens.nbytes() > 0
    own = QuantEmbedding.from_embedding(nn.Embedding.from_pretrained(tied_llama().lm_head.weight.detach()),
                                        Grid(8, 32))
    ids = torch.randint(0, 257, (2, 12))
    assert torch.equal(shared(ids), own(ids))
    logits = model(ids).logits
    tc.save(model, tmp_path / "m", byte_tokenizer())
    tc.save(separate, tmp_path / "s", byte_tokenizer())

    def size(name):
        return (tmp_path / name / "model.safetensors").stat().st_size

    assert size("s") - size("m") >= separate.model.embed_tokens.nbytes()
    loaded, _ = tc.load(tmp_path / "m")
    assert loaded.model.embed_tokens.qweight is loaded.lm_head.qweight
    assert torch.equal(loaded(ids).logits, logits)
    plain = AutoModelForCausalLM.from_pretrained(export_hf(model, byte_tokenizer(), tmp_path / "plain"))
    torch.testing.assert_close(plain(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_a_head_on_another_grid_keeps_its_own_codes():
    model = tied_llama()
    tc.apply(model, tc.quantize.RTN(bits=4, group_size=32, head=True, include=("lm_head",)))
    tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=32))
    assert model.model.embed_tokens.codes_from is None
    with pytest.raises(ValueError, match="keeps its own codes"):
        model.model.embed_tokens.share(model.lm_head)


def test_a_scaled_table_keeps_its_scale_packed_shared_saved_and_exported(tmp_path):
    from helpers import tiny_gemma3

    torch.manual_seed(0)
    model = tiny_gemma3().eval()  # Gemma multiplies looked-up rows by sqrt(hidden)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    tc.apply(model, tc.quantize.RTN(bits=8, group_size=32, head=True, include=("lm_head",)), progress=False)
    tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=32), progress=False)
    table = model.get_input_embeddings()
    assert table.codes_from == "lm_head" and table.scale == pytest.approx(64**0.5)
    with torch.no_grad():
        got = model(input_ids=ids).logits
        assert ((got - expected).norm() / expected.norm()).item() < 0.02
        tc.save(model, tmp_path / "m")
        assert torch.equal(tc.load(tmp_path / "m")[0](input_ids=ids).logits, got)
        export_hf(model, None, tmp_path / "plain")
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, got, rtol=1e-4, atol=1e-4)
