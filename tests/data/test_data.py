import copy
import json

import numpy as np
import pytest
import torch
from tokenizers import processors

import tcompress as tc
from tcompress.data.text import tokenize

from helpers import write_idx


def test_pydoc_corpus_is_always_there_and_deterministic():
    text = tc.data.load_text("pydoc")
    assert len(text) > 100_000 and text == tc.data.pydoc_text()


def test_windows_are_the_tokenized_text_cut_without_overlap(tokenizer):
    ids = tokenize(tc.data.load_text("pydoc"), tokenizer)
    windows = tc.data.windows("pydoc", tokenizer, seqlen=512, limit=3)
    assert windows.shape == (3, 512)
    torch.testing.assert_close(windows.flatten(), ids[: 3 * 512])
    every = tc.data.windows("pydoc", tokenizer, seqlen=4096)
    assert len(every) == ids.numel() // 4096


def test_calibration_samples_are_seeded_windows_of_the_text(tokenizer):
    a = tc.data.calibration("pydoc", tokenizer, n=8, seqlen=64, seed=0)
    b = tc.data.calibration("pydoc", tokenizer, n=8, seqlen=64, seed=0)
    c = tc.data.calibration("pydoc", tokenizer, n=8, seqlen=64, seed=1)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    ids = tokenize(tc.data.load_text("pydoc"), tokenizer)
    start = next(i for i in range(ids.numel() - 64) if torch.equal(ids[i : i + 64], a[0]))
    assert start >= 0


def test_local_text_files(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    rows = [{"text": "first row"}, {"text": "second row"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert tc.data.load_text(tmp_path / "a.txt").startswith("hello world")
    assert tc.data.load_text(tmp_path / "b.jsonl") == "first row\n\nsecond row"
    assert tc.data.windows(tmp_path / "a.txt", tokenizer, seqlen=100).shape == (6, 100)


def test_parquet_text(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"], "id": [1, 2]}), tmp_path / "t.parquet")
    assert tc.data.load_text(tmp_path / "t.parquet") == "one\n\ntwo"


def test_named_corpus_reads_a_local_copy(tmp_path, monkeypatch):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("\n\n = Robert Boulter = \n\n")
    monkeypatch.setenv("TCOMPRESS_DATA", str(tmp_path))
    assert tc.data.load_text("wikitext2", split="test").startswith("\n\n = Robert")


@pytest.mark.parametrize("source, error, match", [
    ("nosuchcorpus", ValueError, "unknown data set 'nosuchcorpus'"),
    ("missing/file.txt", FileNotFoundError, "text file not found"),
])
def test_bad_text_sources(source, error, match):
    with pytest.raises(error, match=match):
        tc.data.load_text(source)


def test_empty_text_is_refused(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="holds no text"):
        tc.data.windows(tmp_path / "empty.txt", tokenizer, seqlen=8)


def test_text_shorter_than_a_window_or_sample(tmp_path, tokenizer):
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ValueError, match="fewer than one window"):
        tc.data.windows(tmp_path / "short.txt", tokenizer, seqlen=64)
    with pytest.raises(ValueError, match="not more than seqlen"):
        tc.data.calibration(tmp_path / "short.txt", tokenizer, n=2, seqlen=64)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"seqlen": -1}, {"n": 2.5}])
def test_calibration_shape_must_be_positive(tokenizer, kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        tc.data.calibration("pydoc", tokenizer, **kwargs)


def test_hub_corpus_without_datasets_or_copy_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TCOMPRESS_DATA", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ImportError, match="tcompress\\[datasets\\]"):
        tc.data.load_text("c4", split="validation")


# --- images ---------------------------------------------------------------------------

def fake_idx_folder(folder, n=6):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28))
    labels = np.arange(n) % 3
    folder.mkdir(exist_ok=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_idx_files_round_trip(tmp_path):
    images, labels = fake_idx_folder(tmp_path)
    assert np.array_equal(tc.data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    data = tc.data.images(tmp_path, limit=4)
    assert data.pixel_values.shape == (4, 1, 28, 28) and len(data) == 4
    torch.testing.assert_close(data.pixel_values[1, 0], torch.tensor(images[1] / 255.0, dtype=torch.float32))
    assert data.labels.tolist() == labels[:4].tolist()


def test_named_idx_set_from_data_dir_through_a_vit_processor(tmp_path, monkeypatch):
    from transformers import ViTImageProcessor

    fake_idx_folder(tmp_path / "fashion-mnist")
    monkeypatch.setenv("TCOMPRESS_DATA", str(tmp_path))
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.5])
    data = tc.data.images("fashion-mnist", processor)
    assert data.pixel_values.shape == (6, 1, 32, 32) and data.classes[0] == "T-shirt/top"
    assert -1.0 <= data.pixel_values.min() and data.pixel_values.max() <= 1.0


def test_image_folder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / label / "a.png")
    data = tc.data.images(tmp_path)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 1]
    assert data.pixel_values.shape == (2, 3, 8, 8)


def test_missing_image_sets(tmp_path, monkeypatch):
    from pathlib import Path

    if Path("/usr/share/datasets/mnist").is_dir():
        pytest.skip("this machine has Debian's MNIST installed")
    monkeypatch.setenv("TCOMPRESS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-mnist"):
        tc.data.images("mnist")
    with pytest.raises(ValueError, match="limit"):
        tc.data.images("mnist", limit=0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        tc.data.images(str(tmp_path / "nothing"))


def test_calibration_samples_are_framed_like_the_tokenizers_inputs(tokenizer):
    framing = copy.deepcopy(tokenizer)
    framing.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A <eos>", special_tokens=[("<eos>", 256)])
    assert framing("a")["input_ids"] == [256, *tokenizer("a")["input_ids"], 256]
    samples = tc.data.calibration("pydoc", framing, n=4, seqlen=32, seed=0)
    plain = tc.data.calibration("pydoc", tokenizer, n=4, seqlen=30, seed=0)
    assert samples.shape == (4, 32)
    assert (samples[:, 0] == 256).all() and (samples[:, -1] == 256).all()
    torch.testing.assert_close(samples[:, 1:-1], plain)
