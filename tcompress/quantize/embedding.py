"""Quantized input embeddings: the token table stored as packed codes with group scales, one
row decoded per token looked up. On the default model the fp32 table is 113 MB of its 538;
at 8 bits, group 64, it is 32 MB (8.5 bits a value), and the lookup costs nothing measurable.

A table tied to the output head is untied first: the head keeps its float weight (quantize it
with `head=True` on a weight method), the embedding gets the codes. Where the head was
quantized first and the table rounded on the head's grid gives the head's very codes (a tied
head rounded to nearest), the embedding reads the head's codes instead of keeping a copy:
one table in memory and on disk, as for the tied float model (28 MB saved on the default
model at 8 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tcompress.engine.method import ModelMethod, option, register
from tcompress.packed.embedding import QuantEmbedding
from tcompress.packed.grid import Grid
from tcompress.packed.quant_linear import QuantLinear


@register
@dataclass(frozen=True)
class EmbeddingQuant(ModelMethod):
    """Quantize the input embedding table (round to nearest; reads the head's codes where they match)."""

    name = "embeddings"
    kind = "quantize"
    needs_data = False
    bits: int = option(8, "bits a table value (default 8 here)")
    group_size: int | None = option(64, "values per scale, or 'channel' for one scale a row", none="channel")
    symmetric: bool = option(False, "symmetric grid (zero at the middle code) instead of asymmetric")

    def __post_init__(self) -> None:
        Grid(self.bits, self.group_size, self.symmetric)

    def headline(self) -> list[str]:
        return [f"W{self.bits}", f"g{self.group_size}" if self.group_size else "per-channel"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("bits", "group_size")

    def check(self, model: nn.Module) -> None:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"embeddings: the model's input embeddings must be an nn.Embedding, got "
                             f"{type(embedding).__name__}")
        Grid(self.bits, self.group_size, self.symmetric).groups_of(embedding.embedding_dim)

    def apply_model(self, model: nn.Module, calib=None, progress: bool = True) -> None:
        embedding = model.get_input_embeddings()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and getattr(head, "weight", None) is embedding.weight:
            head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        table = QuantEmbedding.from_embedding(embedding, Grid(self.bits, self.group_size, self.symmetric))
        model.set_input_embeddings(shared_with_head(model, table) or table)


def shared_with_head(model: nn.Module, table: QuantEmbedding) -> QuantEmbedding | None:
    """A table that reads the output head's codes, where the head is a plain QuantLinear
    holding exactly `table`'s codes, scales and zeros; else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, QuantLinear) or head.bias is not None or head.input_scale is not None \
            or head.outlier_index is not None or head.input_quantizer is not None:
        return None
    if not all(torch.equal(getattr(head, name), getattr(table, name)) for name in ("qweight", "scales", "zeros")):
        return None
    name = next(name for name, module in model.named_modules() if module is head)
    return QuantEmbedding.sharing(head, name, padding_idx=table.padding_idx, scale=table.scale)
