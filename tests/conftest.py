"""Fixtures every test folder shares (the helpers they import are in `helpers.py`)."""

import pytest
import transformers

import tcompress as tc

from helpers import build, byte_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer) -> str:
    """A tiny Llama saved with its tokenizer, as a user's model folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tc.save(build("llama"), folder, tokenizer)
    return str(folder)
