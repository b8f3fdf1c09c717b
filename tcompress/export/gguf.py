"""Export to GGUF (llama.cpp, and transformers' GGUF loader) for Llama-family and Gemma 3 models.

Block linears are written as Q8_0 or Q4_0 (blocks of 32 inputs with an fp16 scale), or in
float (F16 / F32: a file for llama.cpp's own quantizer), the norms in F32, the embedding
table and an untied head by default in the type that holds them as the model has them: Q8_0
for an 8-bit table, else the table's float type (`embeddings="q8_0"` makes a float table
4x smaller at some cost in agreement, and counts it as requantized). A
`QuantLinear` on the type's own grid (8 or 4 bits, groups of 32, symmetric: `value =
d * (code - 2^(bits-1))`) is written from its codes and scales as they are, losslessly;
any other weight is dequantized and requantized (the export says how many).
Each family has its `Layout`: GGUF's tensor names for its modules, Llama's query and key
rows reordered as llama.cpp's interleaved rotary embedding expects (Gemma's rotary is NeoX
style: no reordering), Gemma's norms stored as 1 + weight (as llama.cpp's converter writes
them), and its tokenizer (`gguf_vocab.py`) in the file's metadata.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import Tensor, nn

from tcompress.export.formats import GRIDS, holds
from tcompress.export.gguf_vocab import add_vocab
from tcompress.models.adapters import adapter
from tcompress.packed.quant_linear import QuantLinear

log = logging.getLogger(__name__)

TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
         "f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32}
FILE_TYPES = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
              "f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}
LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}


@dataclass(frozen=True)
class Layout:
    """How a family's model is laid out in GGUF."""

    arch: str
    norms: dict[str, str]  # module path in a block -> GGUF name (stored F32)
    norm_offset: float = 0.0  # added to every norm weight (Gemma's norms multiply by 1 + weight)
    rope_rows: bool = True  # q/k rows reordered from HF's halves to llama.cpp's interleaved pairs
    vocab: str = "gpt2"  # tokenizer model: byte-level BPE (gpt2) or SentencePiece-style (llama)


LAYOUTS = {
    "llama": Layout("llama", {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}),
    "gemma3": Layout("gemma3", {"input_layernorm": "attn_norm", "self_attn.q_norm": "attn_q_norm",
                                "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
                                "pre_feedforward_layernorm": "ffn_norm",
                                "post_feedforward_layernorm": "post_ffw_norm"},
                     norm_offset=1.0, rope_rows=False, vocab="llama"),
}


@dataclass
class GGUFExport:
    path: Path
    tensors: int
    from_codes: int  # linears written from their own codes, losslessly
    requantized: int  # linears (and tables) dequantized and requantized, or float ones rounded, to the file's type
    embeddings: str = "f32"  # the embedding table's type


def export_gguf(model: nn.Module, tokenizer: Any, path: str | os.PathLike, qtype: str = "q4_0",
                embeddings: str | None = None) -> GGUFExport:
    """Write `model` (Llama family) with `tokenizer` to the GGUF file `path`; `embeddings`:
    the type of the embedding table and an untied head (default: `table_type` of each)."""
    if qtype not in FILE_TYPES:
        raise ValueError(f"qtype must be one of {sorted(FILE_TYPES)}, got {qtype!r}")
    if embeddings is not None and embeddings not in TYPES:
        raise ValueError(f"embeddings must be one of {sorted(TYPES)}, got {embeddings!r}")
    parts = adapter(model)
    if parts.family is None or parts.family.name not in LAYOUTS:
        raise ValueError(f"GGUF export writes {' and '.join(LAYOUTS)} models; this is a {parts.name} model")
    layout, config = LAYOUTS[parts.family.name], model.config
    check_expressible(config, layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), layout.arch)
    _metadata(writer, config, qtype)
    add_vocab(writer, tokenizer, config.vocab_size, layout.vocab)
    counts = {"from_codes": 0, "requantized": 0, "tensors": 0}
    for name, data, ggml_type in _tensors(model, layout, qtype, embeddings, counts):
        writer.add_tensor(name, data, raw_dtype=ggml_type)
        counts["tensors"] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return GGUFExport(path, counts["tensors"], counts["from_codes"], counts["requantized"],
                      embeddings or table_type(model.get_input_embeddings()))


def table_type(module: nn.Module) -> str:
    """The GGUF type that holds an embedding table (or output head) as it is: Q8_0 for an
    8-bit one, else F16 for a 16-bit float one and F32 for any other."""
    grid = getattr(module, "grid", None)
    if grid is not None:
        return "q8_0" if grid.bits == 8 else "f32"
    return "f16" if module.weight.dtype == torch.float16 else "f32"


def _table(module: nn.Module, kind: str, counts: dict) -> tuple[np.ndarray, Any]:
    """An embedding table or output head in the type `kind`; counted as requantized where
    that rounds it (a float table to a quantized type, or a table on another grid)."""
    if _on_own_grid(module, kind):
        return _blocks(module.codes(), module.scales, kind), TYPES[kind]
    counts["requantized"] += f"gguf-{kind}" in GRIDS
    return _quantized(_weight(module), kind), TYPES[kind]


def _on_own_grid(module: nn.Module, kind: str) -> bool:
    """Whether `module` (a packed table or head) holds codes on the grid the GGUF type `kind` stores as it is."""
    grid, wanted = getattr(module, "grid", None), GRIDS.get(f"gguf-{kind}")
    return (grid is not None and wanted is not None and grid.bits == wanted["bits"]
            and grid.group_size == wanted["group_size"] and grid.symmetric)


def _blocks(codes: Tensor, scales: Tensor, kind: str) -> np.ndarray:
    return (q4_0_blocks if kind == "q4_0" else q8_0_blocks)(codes, scales)


def _metadata(writer: gguf.GGUFWriter, config: Any, qtype: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(getattr(config, "_name_or_path", "") or "tcompress export")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if getattr(config, "sliding_window", None) and "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        writer.add_sliding_window(config.sliding_window)
    writer.add_file_type(FILE_TYPES[qtype])


GEMMA3_PATTERN = 6  # llama.cpp and transformers' GGUF reader: every 6th Gemma 3 layer attends fully


def check_expressible(config: Any, layout: Layout) -> None:
    """Refuse what a GGUF file of this architecture cannot express: its layer types and attention scale."""
    types = list(getattr(config, "layer_types", None) or ())
    if layout.arch != "gemma3" or not types:
        return
    expected = ["full_attention" if (i + 1) % GEMMA3_PATTERN == 0 else "sliding_attention" for i in range(len(types))]
    if types != expected:
        raise ValueError(f"GGUF's gemma3 architecture attends fully in every {GEMMA3_PATTERN}th layer and slides in "
                         f"the others; this model's layer types are {types} (blocks dropped?), which a GGUF "
                         "file cannot hold")
    scalar, head_dim = getattr(config, "query_pre_attn_scalar", None), getattr(config, "head_dim", None)
    if scalar != head_dim or head_dim != 256:
        raise ValueError(f"GGUF holds no attention scale for gemma3: its readers scale queries by 1/sqrt(256) "
                         f"(llama.cpp by 1/sqrt(head_dim)); this model's query_pre_attn_scalar is {scalar} and head_dim "
                         f"{head_dim}")


def rope_theta(config: Any) -> float:
    """The rotary base of the full-attention layers (Gemma 3 keeps one per layer type)."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)
    return float(getattr(config, "rope_theta", None) or rope.get("rope_theta", 10000.0))


def _tensors(model: nn.Module, layout: Layout, qtype: str, embeddings: str | None, counts: dict):
    config = model.config
    state = dict(model.named_modules())
    table = model.get_input_embeddings()
    yield "token_embd.weight", *_table(table, embeddings or table_type(table), counts)
    rows = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads} if layout.rope_rows else {}
    for index in range(config.num_hidden_layers):
        prefix = f"model.layers.{index}"
        for source, target in layout.norms.items():
            yield f"blk.{index}.{target}.weight", _norm(state[f"{prefix}.{source}"], layout), TYPES["f32"]
        for source, target in LINEARS.items():
            yield f"blk.{index}.{target}.weight", *_linear(state[f"{prefix}.{source}"], qtype, rows.get(target), counts)
    yield "output_norm.weight", _norm(model.model.norm, layout), TYPES["f32"]
    head = model.get_output_embeddings()
    tied = isinstance(table, nn.Embedding) and getattr(head, "weight", None) is table.weight
    if head is not None and not tied:
        yield "output.weight", *_table(head, embeddings or table_type(head), counts)


def _norm(module: nn.Module, layout: Layout) -> np.ndarray:
    return (module.weight.detach().float() + layout.norm_offset).numpy()


def _linear(module: nn.Module, qtype: str, heads: int | None, counts: dict) -> tuple[np.ndarray, Any]:
    if isinstance(module, QuantLinear) and f"gguf-{qtype}" in GRIDS and holds(module, f"gguf-{qtype}"):
        counts["from_codes"] += 1
        codes, scales = module.codes(), module.scales
        if heads is not None:
            codes, scales = _rope_order(codes, heads), _rope_order(scales, heads)
        return _blocks(codes, scales, qtype), TYPES[qtype]
    counts["requantized"] += isinstance(module, QuantLinear)
    weight = _weight(module)
    return _quantized(_rope_order(weight, heads) if heads is not None else weight, qtype), TYPES[qtype]


def _weight(module: nn.Module) -> Tensor:
    return module.dequantize(torch.float32) if hasattr(module, "dequantize") else module.weight.detach().float()


def _quantized(weight: Tensor, qtype: str) -> np.ndarray:
    array = weight.detach().float().numpy()
    if qtype in ("f16", "f32"):
        return array.astype(np.float16 if qtype == "f16" else np.float32)
    return gguf.quants.quantize(array, TYPES[qtype])


def _rope_order(rows: Tensor, heads: int) -> Tensor:
    """Rows of each head from HF's rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def q4_0_blocks(codes: Tensor, scales: Tensor) -> np.ndarray:
    """Q4_0 bytes `[out, in / 32 * 18]` of codes `[out, in]` (0..15, value = d * (code - 8))
    with one fp16 scale `d` per 32 inputs `[out, in / 32]`."""
    out, inputs = codes.shape
    blocks = codes.to(torch.uint8).reshape(out, inputs // 32, 32)
    packed = blocks[..., :16] | (blocks[..., 16:] << 4)  # [out, blocks, 16]
    d = scales.to(torch.float16).reshape(out, inputs // 32, 1).view(torch.uint8)  # [out, blocks, 2]
    return torch.cat([d, packed], dim=-1).reshape(out, -1).numpy()


def q8_0_blocks(codes: Tensor, scales: Tensor) -> np.ndarray:
    """Q8_0 bytes `[out, in / 32 * 34]` of codes `[out, in]` (0..255, value = d * (code - 128))
    with one fp16 scale `d` per 32 inputs `[out, in / 32]`."""
    out, inputs = codes.shape
    signed = (codes.to(torch.int16) - 128).to(torch.int8).reshape(out, inputs // 32, 32).view(torch.uint8)
    d = scales.to(torch.float16).reshape(out, inputs // 32, 1).view(torch.uint8)  # [out, blocks, 2]
    return torch.cat([d, signed], dim=-1).reshape(out, -1).numpy()
