"""Text corpora and their two shapes: calibration samples and evaluation windows.

A source is a corpus name (`pydoc`, always present; `wikitext2`, `c4`, `ptb` through
`datasets`, or from local copies under $TCOMPRESS_DATA) or a path to a .txt, .jsonl or
.parquet file. Evaluation windows follow the GPTQ protocol: the whole text tokenized once
and cut into non-overlapping windows of `seqlen` tokens. Calibration samples are `n`
windows of `seqlen` tokens starting at random offsets drawn with a seed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".jsonl", ".parquet")


@dataclass(frozen=True)
class HubCorpus:
    """A corpus from `datasets`: how to fetch it and how its rows are joined."""

    path: str
    name: str | None
    column: str
    joiner: str
    local: dict[str, str]  # split -> file under $TCOMPRESS_DATA, tried before the hub
    data_files: dict[str, str] | None = None


HUB_CORPORA = {
    "wikitext2": HubCorpus("wikitext", "wikitext-2-raw-v1", "text", "\n\n", {"test": "wikitext2/wiki.test.raw"}),
    "ptb": HubCorpus("ptb_text_only", "penn_treebank", "sentence", " ", {"validation": "ptb/ptb.valid.txt"}),
    "c4": HubCorpus(
        "allenai/c4", None, "text", " ",
        {"validation": "c4-validation-sample/c4_validation_part_a.jsonl"},
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
    ),
}


def pydoc_text() -> str:
    """The text of Python's own documentation topics, present in every CPython."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def corpus_names() -> list[str]:
    return ["pydoc", *HUB_CORPORA]


def load_text(source: str | os.PathLike, split: str = "test") -> str:
    """The whole text of `source` (a corpus name or a file path) as one string."""
    key = str(source)
    if key == "pydoc":
        text = pydoc_text()
    elif key in HUB_CORPORA:
        text = _hub_text(key, split)
    else:
        path = Path(source).expanduser()
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(
                f"unknown data set {key!r}: expected one of {', '.join(corpus_names())} "
                f"or a path to a {'/'.join(TEXT_SUFFIXES)} file"
            )
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {str(path)!r}")
        text = _file_text(path)
    if not text.strip():
        raise ValueError(f"data set {key!r} holds no text")
    return text


def _file_text(path: Path, column: str = "text") -> str:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return "\n\n".join(_column(row, column, path) for row in rows)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading .parquet needs pyarrow: run `pip install pyarrow`") from None
        table = pq.read_table(path)
        if column not in table.column_names:
            raise ValueError(f"{str(path)!r} has no {column!r} column; columns: {table.column_names}")
        return "\n\n".join(str(value) for value in table.column(column).to_pylist())
    return path.read_text(encoding="utf-8")


def _column(row: dict[str, Any], column: str, path: Path) -> str:
    if column not in row:
        raise ValueError(f"{str(path)!r}: a row has no {column!r} field; fields: {sorted(row)}")
    return str(row[column])


def _hub_text(name: str, split: str) -> str:
    corpus = HUB_CORPORA[name]
    local_root = os.environ.get("TCOMPRESS_DATA")
    if local_root and split in corpus.local and (Path(local_root) / corpus.local[split]).is_file():
        return _file_text(Path(local_root) / corpus.local[split], corpus.column)
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"data set {name!r} loads through `datasets`: run `pip install 'tcompress[datasets]'`, "
            "or set TCOMPRESS_DATA to a folder with local copies, or pass a file path"
        ) from None
    rows = datasets.load_dataset(corpus.path, corpus.name, data_files=corpus.data_files, split=split)
    return corpus.joiner.join(rows[corpus.column])


def tokenize(text: str, tokenizer: Any, special: bool = True) -> Tensor:
    """Token ids of the whole text, `[tokens]` (with the tokenizer's own special tokens
    around it, unless `special=False`)."""
    if tokenizer is None:
        raise ValueError("tokenizer is None: text data needs the model's tokenizer")
    ids = tokenizer(text, add_special_tokens=special, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


HEADING = re.compile(r"^ = [^=].* = $", re.M)  # a WikiText article's title line


def wikitext_pages(text: str) -> list[str]:
    """WikiText split into its articles (each from its title line), as the document-level
    WikiText lm-evaluation-harness evaluates."""
    starts = [match.start() for match in HEADING.finditer(text)] or [0]
    pages = [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)])]
    return [page.strip("\n") for page in pages if page.strip()]


def windows(source: str | os.PathLike, tokenizer: Any, seqlen: int = 2048, limit: int | None = None,
            split: str = "test") -> Tensor:
    """Non-overlapping windows of `seqlen` tokens over the whole text, `[n, seqlen]`."""
    check_positive(seqlen=seqlen, limit=limit)
    ids = tokenize(load_text(source, split), tokenizer)
    count = ids.numel() // seqlen
    if count == 0:
        raise ValueError(f"data set {str(source)!r} has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    count = min(count, limit) if limit else count
    return ids[: count * seqlen].view(count, seqlen)


def calibration(source: str | os.PathLike, tokenizer: Any, n: int = 128, seqlen: int = 512, seed: int = 0,
                split: str = "train") -> Tensor:
    """`n` samples of `seqlen` tokens at random offsets of the text, `[n, seqlen]`.

    Each sample is framed as the tokenizer frames an input (e.g. `[CLS] ... [SEP]` for
    BERT; nothing for GPT-2-style tokenizers), so the calibration activations include
    those tokens' as the model's real inputs do."""
    check_positive(n=n, seqlen=seqlen)
    before, after = special_tokens(tokenizer)
    body = seqlen - len(before) - len(after)
    ids = tokenize(load_text(source, split), tokenizer, special=False)
    if body <= 0 or ids.numel() <= body:
        raise ValueError(f"data set {str(source)!r} has {ids.numel()} tokens, not more than seqlen={seqlen} "
                         f"less {len(before) + len(after)} special tokens")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body, (n,), generator=generator)
    before, after = torch.tensor(before, dtype=torch.long), torch.tensor(after, dtype=torch.long)
    return torch.stack([torch.cat([before, ids[start : start + body], after]) for start in starts.tolist()])


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own (e.g. [CLS] and [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(framed) - len(plain) + 1) if framed[i : i + len(plain)] == plain), None)
    if at is None:
        return [], []
    return framed[:at], framed[at + len(plain):]


def check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

