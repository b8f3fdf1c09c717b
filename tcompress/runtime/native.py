"""A single-token decode step of the whole model as one C call (`tc_decode_step`).

The decoder's step from Python makes about a dozen kernel calls a layer; at the default model's
size their dispatch costs more than the arithmetic. Here the layers' tensors are described
once, as C structs pointing at the modules' own buffers (nothing is copied), and a step is one
call: the same kernels in the same order, with no interpreter between them.

It serves layers the kernels run as they are: packed 4- and 8-bit `QuantLinear`s (no input
scale, outlier columns or activation quantizer) and float32 `nn.Linear`s, RMSNorms with one
epsilon, the same head counts in every layer. Anything else keeps the step in Python.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor, nn

from tcompress import kernels
from tcompress.kernels import ops
from tcompress.packed.quant_linear import QuantLinear

Pointer, Int = ctypes.c_void_p, ctypes.c_int


class LinearStruct(ctypes.Structure):
    _fields_ = [("weight", Pointer), ("scales", Pointer), ("zeros", Pointer), ("bias", Pointer),
                ("N", Int), ("K", Int), ("group", Int), ("bits", Int)]


LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class LayerStruct(ctypes.Structure):
    _fields_ = ([("input_norm", Pointer), ("post_norm", Pointer), ("q_norm", Pointer), ("k_norm", Pointer)]
                + [(name, LinearStruct) for name in LINEARS] + [("keys", Pointer), ("values", Pointer)])


class ModelStruct(ctypes.Structure):
    _fields_ = [(name, Int) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate",
                                         "capacity", "int8_rows")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("layer", ctypes.POINTER(LayerStruct)),
        ("final_norm", Pointer), ("head", LinearStruct)]


class Unsupported(Exception):
    """The model has a part the one-call step does not run."""


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _float32(tensor: Tensor, what: str) -> Tensor:
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise Unsupported(f"{what} is not a contiguous float32 CPU tensor")
    return tensor


def linear_struct(module: nn.Module, name: str) -> LinearStruct:
    bias = None if module.bias is None else _float32(module.bias, f"{name}.bias")
    if isinstance(module, QuantLinear):
        if not module.kernel_fits:
            raise Unsupported(f"{name}: {module.grid.bits}-bit codes of width {module.in_features} have no kernel")
        if module.input_scale is not None or module.outlier_index is not None or module.input_quantizer is not None:
            raise Unsupported(f"{name} has an input scale, outlier columns or an activation quantizer")
        return LinearStruct(module.qweight.data_ptr(), module.scales.data_ptr(), module.zeros.data_ptr(),
                            _pointer(bias), module.out_features, module.in_features, module.group,
                            module.grid.bits)
    if type(module) is nn.Linear and module.in_features % 32 == 0:
        weight = _float32(module.weight, f"{name}.weight")
        return LinearStruct(weight.data_ptr(), None, None, _pointer(bias), module.out_features, module.in_features,
                            0, 32)
    raise Unsupported(f"{name} is a {type(module).__name__} the one-call step does not run")


def _norm(norm: nn.Module, eps: float, name: str) -> int:
    if getattr(norm, "variance_epsilon", None) != eps or getattr(norm, "weight", None) is None:
        raise Unsupported(f"{name} is not an RMSNorm with epsilon {eps}")
    return _float32(norm.weight, f"{name}.weight").data_ptr()


class NativeStep:
    """`step(h, position)`: the decode step of `decoder`'s model in one C call. Raises
    `Unsupported` (with the reason) at construction where the model has parts it does not run.
    It holds the addresses of the model's tensors and the decoder's cache: build it once they
    are final."""

    def __init__(self, decoder) -> None:
        if not kernels.available() or decoder.dtype != torch.float32 or decoder.device.type != "cpu":
            raise Unsupported("the kernels need float32 on CPU")
        model, layers = decoder.model, decoder.layers
        eps = getattr(model.model.norm, "variance_epsilon", None)
        self.layers = (LayerStruct * len(layers))(*[self._layer(decoder, i, layer, eps) for i, layer in enumerate(layers)])
        intermediate = max(layer.mlp.gate_proj.out_features for layer in layers)
        self.model = ModelStruct(len(layers), model.config.hidden_size, decoder.heads, decoder.kv_heads,
                                 decoder.head_dim, intermediate, decoder.max_length, 0, eps, decoder.scaling,
                                 self.layers, _norm(model.model.norm, eps, "model.norm"),
                                 linear_struct(model.lm_head, "lm_head"))
        self.decoder = decoder

    def _layer(self, decoder, index: int, layer: nn.Module, eps: float) -> LayerStruct:
        attention, mlp, prefix = layer.self_attn, layer.mlp, f"layers.{index}"
        dims = {"q": decoder.heads * decoder.head_dim, "k": decoder.kv_heads * decoder.head_dim,
                "v": decoder.kv_heads * decoder.head_dim}
        modules = {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.o_proj,
                   "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
        for name, width in dims.items():
            if modules[name].out_features != width:
                raise Unsupported(f"{prefix}.{name} has {modules[name].out_features} outputs, not {width}")
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        return LayerStruct(
            _norm(layer.input_layernorm, eps, f"{prefix}.input_layernorm"),
            _norm(layer.post_attention_layernorm, eps, f"{prefix}.post_attention_layernorm"),
            None if q_norm is None else _norm(q_norm, eps, f"{prefix}.q_norm"),
            None if k_norm is None else _norm(k_norm, eps, f"{prefix}.k_norm"),
            *[linear_struct(module, f"{prefix}.{name}") for name, module in modules.items()],
            decoder.keys[index].data_ptr(), decoder.values[index].data_ptr())

    def __call__(self, h: Tensor, position: int) -> Tensor:
        """Logits `[batch, vocab]` after the tokens embedded as `h` `[batch, hidden]` (a fresh
        tensor: it is overwritten) at `position`; their K/V go into the decoder's cache."""
        self.model.int8_rows = ops.INT8_GEMV_TOKENS if ops.GEMV_ACTIVATIONS == "int8" else 0
        batch = h.shape[0]
        logits = torch.empty(batch, self.model.head.N, dtype=torch.float32)
        cos, sin = self.decoder.cos[position], self.decoder.sin[position]
        status = kernels.library().tc_decode_step(ctypes.byref(self.model), h.data_ptr(), batch, position,
                                                  cos.data_ptr(), sin.data_ptr(), logits.data_ptr(),
                                                  torch.get_num_threads())
        if status != 0:
            raise RuntimeError("the one-call decode step failed (out of memory?)")
        return logits
