"""Llama-family models for the `Decoder` without transformers' modeling code.

Importing a transformers model class loads about 120 MB of Python modules (measured: a
process holds 249 MB after `import tcompress` and 371 MB once `LlamaForCausalLM` is
imported), more than a 4-bit 135M-parameter model takes. `load_for_decoding(folder)` builds
the modules the decoder reads from the small classes here, under transformers' own module
names, so a saved folder (packed by tcompress, or a plain float checkpoint) loads as it is,
its tensors memory-mapped from the safetensors files. The result serves `Decoder` and a greedy
`generate` only: it has no forward or training of its own (use `tc.load` for those).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from tcompress.checkpoint.load import load_packed
from tcompress.checkpoint.record import Record
from tcompress.runtime.decoder import DECODER_MODEL_TYPES, Decoder

ROPE_TYPES = ("default", "llama3")


def load_for_decoding(folder: str | os.PathLike) -> LeanCausalLM:
    """The model saved in `folder` (config.json and safetensors files) as modules for `Decoder`."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r}: expected a saved model folder with config.json")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{str(folder)!r}: no .safetensors files (the decoder loads safetensors only)")
    config = read_config(folder / "config.json")
    record = Record.read(folder)
    model = load_packed(LeanCausalLM, config, folder, record.modules if record else {}, torch.float32)
    for parameter in model.parameters():  # float checkpoints saved in bf16 / fp16 decode in fp32
        if parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model.eval()


def read_config(path: Path) -> SimpleNamespace:
    """config.json as attributes, checked for what this module builds."""
    values = json.loads(path.read_text())
    model_type = values.get("model_type")
    if model_type not in DECODER_MODEL_TYPES:
        raise ValueError(f"{str(path)!r}: model_type {model_type!r}; the lean loader builds "
                         f"{', '.join(DECODER_MODEL_TYPES)}")
    rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{str(path)!r}: rotary embedding type {rope_type!r}; the lean loader computes "
                         f"{', '.join(ROPE_TYPES)} (load the model with tc.load instead)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{str(path)!r}: partial rotary embeddings are not computed by the lean loader "
                         f"(load the model with tc.load instead)")
    values["head_dim"] = values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
    values.setdefault("num_key_value_heads", values["num_attention_heads"])
    values["rope"] = {**rope, "rope_type": rope_type,
                      "rope_theta": rope.get("rope_theta", values.get("rope_theta", 10000.0))}
    return SimpleNamespace(**values)


class RMSNorm(nn.Module):
    """Holds the weight and epsilon the decoder's fused RMSNorm reads."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.variance_epsilon = eps


class Rotary(nn.Module):
    """Rotary embedding tables, as transformers' `rotary_emb(x, position_ids)` returns them."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(config.rope, config.head_dim), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions[..., None].float() * self.inv_freq.float()  # in fp32, as transformers does
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def inverse_frequencies(rope: dict, head_dim: int) -> Tensor:
    """Per-pair rotation frequencies; "llama3" scales the long wavelengths as Llama 3.1 does."""
    dim = head_dim
    inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    if rope["rope_type"] == "default":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    between = (wavelength <= old_context / low) & (wavelength >= old_context / high)
    return torch.where(between, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


class Attention(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        hidden, dim = config.hidden_size, config.head_dim
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
        self.head_dim, self.scaling = dim, dim**-0.5
        self.q_proj = nn.Linear(hidden, heads * dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * dim, bias=bias)
        self.o_proj = nn.Linear(heads * dim, hidden, bias=getattr(config, "attention_bias", False))
        if config.model_type == "qwen3":
            self.q_norm = RMSNorm(dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(dim, config.rms_norm_eps)


class MLP(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)


class Layer(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.self_attn, self.mlp = Attention(config), MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Body(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        # given its (empty) weight: initialising one on the meta device would import sympy (70 MB)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        with torch.device("cpu"):  # computed here, not loaded: real even when the weights are meta
            self.rotary_emb = Rotary(config)


class LeanCausalLM(nn.Module):
    """A Llama-family causal LM's modules under transformers' names, for `Decoder`."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @classmethod
    def _from_config(cls, config: SimpleNamespace, dtype: torch.dtype = torch.float32) -> LeanCausalLM:
        """The modules with empty (meta) weights, for the files to fill."""
        with torch.device("meta"):  # no weight allocated, initialised and dropped
            return cls(config).to(dtype)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def tie_weights(self) -> None:
        """A tied float head reads the embedding table, as in transformers."""
        if getattr(self.config, "tie_word_embeddings", False) and isinstance(self.lm_head, nn.Linear) \
                and isinstance(self.model.embed_tokens, nn.Embedding):
            self.lm_head.weight = self.model.embed_tokens.weight

    def can_generate(self) -> bool:
        return True

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, max_new_tokens: int = 20) -> Tensor:
        """Greedy continuation of the prompts `[batch, tokens]`: `[batch, tokens + max_new_tokens]`."""
        decoder = Decoder(self, max_length=input_ids.shape[1] + max_new_tokens, batch_size=input_ids.shape[0])
        return decoder.generate(input_ids, max_new_tokens)

    def forward(self, *args, **kwargs):
        raise TypeError("a model from load_for_decoding runs through tcompress.runtime.Decoder (or its greedy "
                        "generate) only; load it with tc.load for a full forward")
