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

DECODER_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")  # the model types it computes exactly
GEMMA = ("gemma3_text",)  # four norms a block (attention and FFN outputs normed too), a GELU-gated MLP, and
# sliding-window layers with their own rotary tables


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
        self.gemma = config.model_type in GEMMA
        types = list(getattr(config, "layer_types", None) or ["full_attention"] * len(self.layers))
        # per layer: its rotary tables (by layer type) and its attention window (None: all positions)
        self.tables = {kind: self._rotary(kind if self.gemma else None) for kind in dict.fromkeys(types)}
        self.layer_tables = [self.tables[kind] for kind in types]
        self.windows = [config.sliding_window if kind == "sliding_attention" else None for kind in types]
        self.cos, self.sin = self.layer_tables[0]
        self.act = (lambda x: F.gelu(x, approximate="tanh")) if self.gemma else F.silu
        shape = (len(self.layers), batch_size, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.length = 0
        self.active = 0  # sequences in the current batch
        # q/k/v and gate/up read one input each: one kernel call for each set when decoding
        self.qkv = [SharedInputLinears([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
                    for layer in self.layers]
        self.gate_up = [SharedInputLinears([layer.mlp.gate_proj, layer.mlp.up_proj]) for layer in self.layers]
        # single-token steps run their float parts (norms, rotation, attention) as C calls too
        self.c_steps = (not self.gemma and kernels.available() and self.dtype == torch.float32
                        and self.device.type == "cpu"
                        and all(is_rms_norm(norm) for layer in self.layers
                                for norm in (layer.input_layernorm, layer.post_attention_layernorm)))
        try:  # where the model's parts allow, the whole single-token step is one C call
            if self.gemma:
                raise Unsupported("Gemma's blocks are not the C step's")
            self.native: NativeStep | None = NativeStep(self)
        except Unsupported as reason:
            log.debug("decode steps go layer by layer: %s", reason)
            self.native = None

    def _rotary(self, layer_type: str | None) -> tuple[Tensor, Tensor]:
        """The rotary tables `[max_length, head_dim]` (cos, sin), of one layer type where the
        model has several."""
        positions = torch.arange(self.max_length, device=self.device)[None]
        x = torch.zeros(1, dtype=self.dtype, device=self.device)
        rotary = self.model.model.rotary_emb
        cos, sin = rotary(x, positions) if layer_type is None else rotary(x, positions, layer_type)
        return cos[0].contiguous(), sin[0].contiguous()

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
        h = self.model.model.embed_tokens(ids)
        for index, layer in enumerate(self.layers):
            h = self._block(index, layer, h, start, end)
        self.length = end
        return self._logits(h[:, -1])

    def _block(self, index: int, layer: nn.Module, h: Tensor, start: int, end: int) -> Tensor:
        """One block over positions `start` to `end` of `h` `[batch, tokens, hidden]`."""
        attended = self._attention(index, layer, h, start, end)
        if self.gemma:
            attended = layer.post_attention_layernorm(attended)
        h = h + attended
        gate, up = self.gate_up[index](rms_norm(layer.pre_feedforward_layernorm if self.gemma
                                                else layer.post_attention_layernorm, h))
        out = layer.mlp.down_proj(self.act(gate).mul_(up))
        return h + (layer.post_feedforward_layernorm(out) if self.gemma else out)

    def _logits(self, h: Tensor) -> Tensor:
        logits = self.model.lm_head(rms_norm(self.model.model.norm, h))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

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

    def _attention(self, index: int, layer: nn.Module, h: Tensor, start: int, end: int) -> Tensor:
        attention = layer.self_attn
        batch, tokens, _ = h.shape
        cos, sin = (table[start:end] for table in self.layer_tables[index])
        q, k, v = self.qkv[index](rms_norm(layer.input_layernorm, h))
        q = q.view(batch, tokens, self.heads, self.head_dim)
        k = k.view(batch, tokens, self.kv_heads, self.head_dim)
        if hasattr(attention, "q_norm"):  # Qwen3, Gemma 3: RMSNorm of each head before the rotation
            q, k = rms_norm(attention.q_norm, q), rms_norm(attention.k_norm, k)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        keys, values = self.keys[index, :batch, :, :end], self.values[index, :batch, :, :end]
        keys[:, :, start:] = k
        values[:, :, start:] = v.view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        window = self.windows[index]
        if tokens == 1:  # one query a sequence: the grouped heads as rows of one matmul per KV head
            if window is not None:  # the last `window` positions, the query's own included
                keys, values = keys[:, :, max(0, end - window):], values[:, :, max(0, end - window):]
            grouped = q.reshape(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            scores = torch.matmul(grouped * self.scaling, keys.transpose(-1, -2))
            out = torch.matmul(torch.softmax(scores, dim=-1), values)
        else:
            mask = None if window is None else window_mask(start, end, window, self.device)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None,
                                                 scale=self.scaling, enable_gqa=self.kv_heads != self.heads)
            out = out.transpose(1, 2)
        return attention.o_proj(out.reshape(batch, tokens, self.heads * self.head_dim))


def window_mask(start: int, end: int, window: int, device: torch.device) -> Tensor:
    """Which keys `[0, end)` each query `[start, end)` sees in a sliding window: itself and the
    `window` - 1 positions before it, `[tokens, end]` bool."""
    queries = torch.arange(start, end, device=device)[:, None]
    keys = torch.arange(end, device=device)[None]
    return (keys <= queries) & (keys > queries - window)


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
    if model_type in GEMMA:
        act = getattr(config, "hidden_activation", None)
        if act != "gelu_pytorch_tanh" or getattr(config, "attn_logit_softcapping", None) is not None:
            raise ValueError(f"the fast decoder computes Gemma 3 with a tanh-GELU MLP and no attention logit "
                             f"softcapping; this model has {act!r}, softcapping "
                             f"{getattr(config, 'attn_logit_softcapping', None)}")
        return
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", model_type == "mistral"):
        raise ValueError(f"sliding-window attention (window {window}) is not supported by the fast decoder")
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"the fast decoder expects a SiLU-gated MLP; this model's hidden_act is {act!r}")
