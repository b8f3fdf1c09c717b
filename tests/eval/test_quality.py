import math

import numpy as np
import pytest
import torch

import tcompress as tc
from tcompress.data import ImageSet

from helpers import build


def reference_perplexity(model, windows):
    """Literal GPTQ-protocol perplexity: sum of token NLLs over all windows."""
    total, count = 0.0, 0
    for window in windows:
        logits = model(window[None]).logits[0]
        log_probs = torch.log_softmax(logits[:-1].double(), -1)
        total -= log_probs[torch.arange(len(window) - 1), window[1:]].sum().item()
        count += len(window) - 1
    return math.exp(total / count)


def test_perplexity_matches_the_literal_definition(tokenizer):
    model = build("llama")
    windows = tc.data.windows("pydoc", tokenizer, seqlen=64, limit=5)
    got = tc.eval.perplexity(model, tokenizer, windows, seqlen=64, batch_size=2, progress=False)
    with torch.no_grad():
        assert got == pytest.approx(reference_perplexity(model, windows), rel=1e-5)
    assert got == pytest.approx(tc.eval.perplexity(model, tokenizer, "pydoc", seqlen=64, windows=5, progress=False))


def test_random_model_perplexity_is_near_vocab_size(tokenizer):
    ppl = tc.eval.perplexity(build("llama"), tokenizer, "pydoc", seqlen=128, windows=2, progress=False)
    assert 100 < ppl < 1000  # random init: close to uniform over 300 tokens


def test_seqlen_beyond_context_is_refused_before_any_work(tokenizer):
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        tc.eval.perplexity(build("llama"), tokenizer, "pydoc", seqlen=512)


def test_fidelity_of_a_model_to_itself_and_to_a_changed_copy():
    model, other = build("llama"), build("llama")
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    same = tc.eval.fidelity(model, model, ids, progress=False)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.top1 == 1.0
    other.lm_head.weight.data += 0.05 * torch.randn_like(other.lm_head.weight)
    changed = tc.eval.fidelity(model, other, ids, progress=False)
    assert changed.kl > 1e-4 and changed.top1 < 1.0


def test_spearman_against_a_hand_computed_case_with_ties():
    assert tc.eval.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert tc.eval.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 2, 3, 4 -> Pearson of the ranks
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert tc.eval.spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(expected)


def test_read_stsb(tmp_path):
    path = tmp_path / "dev.tsv"
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    path.write_text(header + "\n0\tmain\tx\t2012\t1\tnone\tnone\tA \"man\tA man.\t5.000\n")
    first, second, gold = tc.eval.read_stsb(path)
    assert first == ['A "man'] and second == ["A man."] and gold == [5.0]
    with pytest.raises(FileNotFoundError, match="STS-B file not found"):
        tc.eval.read_stsb(tmp_path / "none.tsv")


def test_embeddings_are_mean_pooled_and_normalised(tokenizer):
    model = build("bert")
    emb = tc.eval.embed(model, tokenizer, ["a short one", "a much longer sentence here"])
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert tc.eval.embedding_cosine(model, model, tokenizer, ["x y", "z"]) == pytest.approx(1.0)


def test_embedding_cosine_takes_the_reference_embeddings_computed_once(tokenizer):
    reference, model = build("bert"), build("bert")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sentences = ["a short one", "a much longer sentence here"]
    cosine = tc.eval.embedding_cosine(reference, model, tokenizer, sentences)
    assert cosine < 0.9999
    given = tc.eval.embed(reference, tokenizer, sentences)
    assert tc.eval.embedding_cosine(given, model, tokenizer, sentences) == pytest.approx(cosine)


def test_write_json_creates_the_folder(tmp_path):
    tc.report.write_json(tmp_path / "a" / "b.json", [{"x": 1.5}])
    assert (tmp_path / "a" / "b.json").read_text() == '[\n  {\n    "x": 1.5\n  }\n]\n'


def test_image_accuracy():
    model = build("vit")
    pixels = torch.randn(10, 1, 28, 28)
    with torch.no_grad():
        predicted = model(pixel_values=pixels).logits.argmax(-1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % 10
    assert tc.eval.accuracy(model, ImageSet(pixels, labels, []), batch_size=4, progress=False) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="empty"):
        tc.eval.accuracy(model, ImageSet(pixels[:0], labels[:0], []))
