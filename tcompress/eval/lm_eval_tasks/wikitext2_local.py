"""The pages and metrics of the `wikitext2_local` lm-evaluation-harness task: WikiText-2's
test articles from the local copy (`$TCOMPRESS_DATA/wikitext2/wiki.test.raw`, else through
`datasets`), scored by rolling log-likelihood as the harness's own `wikitext` task scores them,
on the raw text tcompress's perplexity reads (no detokenization), so the two compare."""

from __future__ import annotations

import re
from typing import Any

from tcompress.data.text import load_text, wikitext_pages


def pages(**kwargs: Any):
    """The test split as a `datasets.DatasetDict` of `{"page": article}` rows."""
    import datasets

    rows = [{"page": page} for page in wikitext_pages(load_text("wikitext2", "test"))]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def words_and_bytes(page: str) -> tuple[int, int]:
    """The units word and byte perplexity count, as the harness's `wikitext` task counts them."""
    return len(re.split(r"\s+", page)), len(page.encode("utf-8"))


def process_results(doc: dict, results: list) -> dict:
    (loglikelihood,) = results
    words, size = words_and_bytes(doc["page"])
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, size),
            "bits_per_byte": (loglikelihood, size)}
