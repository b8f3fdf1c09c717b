"""A lean decoder for Llama-family models (Llama, Mistral, Qwen2, Qwen3, SmolLM): prefill and
token-by-token decoding with a static KV cache, using the model's own modules.

Hugging Face's generic forward spends most of a CPU decode step in Python: cache objects, mask
building, dispatch over options. This decoder does only what a decoder-only Llama step needs:
RMSNorm, the projections (QuantLinear's packed kernels where the model has them; q/k/v and
gate/up in one call each), rotary embedding from a precomputed table, a write into
preallocated K/V tensors, attention over the filled part of the cache, the gated MLP. A
single-token step on CPU is one C call for the whole model where its layers allow
(`tcompress.runtime.native`), else runs its norms, rotation, attention and SiLU as C calls
layer by layer (`tcompress.kernels`); prefill uses torch (SDPA). Its logits equal the model's
forward (tested), so a quantized model decodes what it computes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcompress import kernels
from tcompress.runtime.fused import SharedInputLinears
from tcompress.runtime.native import NativeStep, Unsupported

log = logging.getLogger(__name__)

DECODER_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the model types it computes exactly


class Decoder:
    """Greedy or stepwise decoding of `model` for up to `batch_size` sequences of at most
    `max_length` tokens (prompt plus new tokens)."""

    def __init__(self, model: nn.Module, max_length: int = 2048, batch_size: int = 1):
        check_model(model)
        config = model.config
        self.model, self.max_length, self.batch_size = model.eval(), max_length, batch_size
        self.layers = list(model.model.layers)
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.scaling = attention.scaling
        parameter = next(model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        positions = torch.arange(max_length, device=self.device)[None]
        cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=self.dtype, device=self.device), positions)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # [max_length, head_dim]
        shape = (len(self.layers), batch_size, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.length = 0
        self.active = 0  # sequences in the current batch
        # q/k/v and gate/up read one input each: one kernel call for each set when decoding
        self.qkv = [SharedInputLinears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj])
                    for l in self.layers]
        self.gate_up = [SharedInputLinears([l.mlp.gate_proj, l.mlp.up_proj]) for l in self.layers]
        # single-token steps run their float parts (norms, rotation, attention) as C calls too
        self.c_steps = (kernels.available() and self.dtype == torch.float32 and self.device.type == "cpu"
                        and all(is_rms_norm(norm) for layer in self.layers
                                for norm in (layer.input_layernorm, layer.post_attention_layernorm)))
        try:  # where the model's parts allow, the whole single-token step is one C call
            self.native: NativeStep | None = NativeStep(self)
        except Unsupported as reason:
            log.debug("decode steps go layer by layer: %s", reason)
            self.native = None

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor) -> Tensor:
        """Start new sequences from prompts `[batch, tokens]` (no padding); the next-token logits `[batch, vocab]`."""
        batch, tokens = input_ids.shape
        if batch > self.batch_size or tokens > self.max_length:
            raise ValueError(f"input_ids {tuple(input_ids.shape)}: this decoder holds at most {self.batch_size} "
                             f"sequences of {self.max_length} tokens")
        self.length, self.active = 0, batch
        return self._forward(input_ids)

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per sequence `[batch]` or `[batch, 1]`; the next-token logits `[batch, vocab]`."""
        tokens = tokens.reshape(self.active, 1)
        if self.length + 1 > self.max_length:
            raise ValueError(f"the sequences reached max_length={self.max_length}")
        return self._forward(tokens)

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy continuation: `[batch, prompt + max_new_tokens]`."""
        if input_ids.shape[1] + max_new_tokens > self.max_length:
            raise ValueError(f"prompt {input_ids.shape[1]} + {max_new_tokens} new tokens exceed "
                             f"max_length={self.max_length}")
        out = [input_ids]
        token = self.prefill(input_ids).argmax(-1)
        for _ in range(max_new_tokens - 1):
            out.append(token[:, None])
            token = self.step(token).argmax(-1)
        out.append(token[:, None])
        return torch.cat(out, dim=1)

    def _forward(self, ids: Tensor) -> Tensor:
        batch, tokens = ids.shape
        if tokens == 1 and self.native is not None:
            logits = self.native(self.model.model.embed_tokens(ids).reshape(batch, -1).clone(), self.length)
            self.length += 1
            return logits
        if tokens == 1 and self.c_steps:
            return self._c_step(ids)
        start, end = self.length, self.length + tokens
        cos, sin = self.cos[start:end], self.sin[start:end]
        h = self.model.model.embed_tokens(ids)
        for index, layer in enumerate(self.layers):
            h = h + self._attention(index, layer, h, cos, sin, start, end)
            gate, up = self.gate_up[index](rms_norm(layer.post_attention_layernorm, h))
            h = h + layer.mlp.down_proj(F.silu(gate).mul_(up))
        self.length = end
        return self.model.lm_head(rms_norm(self.model.model.norm, h[:, -1]))

    def _c_step(self, ids: Tensor) -> Tensor:
        """One token a sequence with the float parts in C: the same computation as `_forward`."""
        batch, position = ids.shape[0], self.length
        cos, sin = self.cos[position:position + 1].expand(batch, -1), self.sin[position:position + 1].expand(batch, -1)
        cos, sin = cos.contiguous(), sin.contiguous()
        h = self.model.model.embed_tokens(ids).reshape(batch, -1)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            norm = layer.input_layernorm
            q, k, v = self.qkv[index](kernels.rms_norm(h, norm.weight, norm.variance_epsilon))
            if hasattr(attention, "q_norm"):
                q = rms_norm(attention.q_norm, q.view(batch, self.heads, self.head_dim)).reshape(batch, -1)
                k = rms_norm(attention.k_norm, k.view(batch, self.kv_heads, self.head_dim)).reshape(batch, -1)
            kernels.rope_(q, self.heads, cos, sin)
            kernels.rope_(k, self.kv_heads, cos, sin)
            keys, values = self.keys[index], self.values[index]
            keys[:batch, :, position] = k.view(batch, self.kv_heads, self.head_dim)
            values[:batch, :, position] = v.view(batch, self.kv_heads, self.head_dim)
            out = kernels.attention_step(q.view(batch, self.heads, self.head_dim), keys, values, position + 1,
                                         self.scaling)
            h = h + attention.o_proj(out.view(batch, -1))
            norm = layer.post_attention_layernorm
            gate, up = self.gate_up[index](kernels.rms_norm(h, norm.weight, norm.variance_epsilon))
            h = h + layer.mlp.down_proj(kernels.silu_mul(gate, up))
        self.length = position + 1
        return self.model.lm_head(rms_norm(self.model.model.norm, h))

    def _attention(self, index: int, layer: nn.Module, h: Tensor, cos: Tensor, sin: Tensor, start: int,
                   end: int) -> Tensor:
        attention = layer.self_attn
        batch, tokens, _ = h.shape
        q, k, v = self.qkv[index](rms_norm(layer.input_layernorm, h))
        q = q.view(batch, tokens, self.heads, self.head_dim)
        k = k.view(batch, tokens, self.kv_heads, self.head_dim)
        if hasattr(attention, "q_norm"):  # Qwen3: RMSNorm of each head before the rotation
            q, k = rms_norm(attention.q_norm, q), rms_norm(attention.k_norm, k)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        keys, values = self.keys[index, :batch, :, :end], self.values[index, :batch, :, :end]
        keys[:, :, start:] = k
        values[:, :, start:] = v.view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        if tokens == 1:  # one query a sequence: the grouped heads as rows of one matmul per KV head
            grouped = q.reshape(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            scores = torch.matmul(grouped * self.scaling, keys.transpose(-1, -2))
            out = torch.matmul(torch.softmax(scores, dim=-1), values)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=self.scaling,
                                                 enable_gqa=self.kv_heads != self.heads).transpose(1, 2)
        return attention.o_proj(out.reshape(batch, tokens, self.heads * self.head_dim))


def is_rms_norm(norm: nn.Module) -> bool:
    return getattr(norm, "variance_epsilon", None) is not None and getattr(norm, "weight", None) is not None


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """The model's RMSNorm as one op (`F.rms_norm`) where its weight and epsilon can be read."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or getattr(norm, "weight", None) is None:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of `x` `[batch, heads, tokens, head_dim]` (HF's rotate_half convention)."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat([-x[..., half:], x[..., :half]], dim=-1), sin)


def check_model(model: nn.Module) -> None:
    """Refuse models this decoder does not compute exactly, naming what differs."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in DECODER_MODEL_TYPES:
        raise ValueError(f"the fast decoder serves {', '.join(DECODER_MODEL_TYPES)} models; this is {model_type!r} "
                         f"(use the model's own generate)")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", model_type == "mistral"):
        raise ValueError(f"sliding-window attention (window {window}) is not supported by the fast decoder")
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"the fast decoder expects a SiLU-gated MLP; this model's hidden_act is {act!r}")
