"""`QuantEmbedding`: a token table stored as packed codes with group scales, one row decoded
per token looked up. On the default model the fp32 table is 113 MB of its 538; at 8 bits,
group 64, it is 32 MB (8.5 bits a value), and the lookup costs nothing measurable. A table
may instead read the codes of the output head (`codes_from`) where they are the same, so
one table is held, as for a tied float model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcompress.packed.bits import pack, packed_bytes_per_row, unpack
from tcompress.packed.grid import Grid, dequantize_codes, expand, quantize_weight
from tcompress.packed.registry import register_format


@register_format
class QuantEmbedding(nn.Module):
    """An embedding table as packed codes `qweight` uint8 `[num, packed]` with fp16 `scales` and
    `zeros` `[num, groups]`; looking up a token decodes its row. With `codes_from` (the output
    head's module name) it holds no buffers and reads the head's, once `share` linked them."""

    format = "quant_embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, grid: Grid, dtype: torch.dtype = torch.float32,
                 padding_idx: int | None = None, codes_from: str | None = None, scale: float = 1.0):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.grid = num_embeddings, embedding_dim, grid
        self.padding_idx, self.compute_dtype = padding_idx, dtype
        self.codes_from = codes_from
        self.scale = float(scale)  # looked-up rows are multiplied by it (Gemma's embeddings: sqrt(hidden))
        self._head: list[nn.Module] = []  # the module whose codes a shared table reads (not a submodule)
        if codes_from is not None:
            return
        groups = grid.groups_of(embedding_dim)
        self.register_buffer("qweight", torch.zeros(num_embeddings, packed_bytes_per_row(embedding_dim, grid.bits),
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(num_embeddings, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(num_embeddings, groups, dtype=torch.float16))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, grid: Grid) -> QuantEmbedding:
        weight = embedding.weight.detach()
        module = cls(weight.shape[0], weight.shape[1], grid, dtype=weight.dtype, padding_idx=embedding.padding_idx,
                     scale=embedding_scale(embedding))
        codes, scales, zeros = quantize_weight(weight.float(), grid)
        module.qweight.copy_(pack(codes, grid.bits))
        module.scales.copy_(scales.to(torch.float16))
        module.zeros.copy_(zeros.to(torch.float16))
        return module

    def __getattr__(self, name: str):
        head = self.__dict__.get("_head")
        if head and name in ("qweight", "scales", "zeros"):
            return getattr(head[0], name)
        return super().__getattr__(name)

    def share(self, head: nn.Module) -> None:
        """Read the codes of `head` (a QuantLinear `[num, dim]` on this grid) from now on."""
        if self.codes_from is None:
            raise ValueError("share: this embedding keeps its own codes (built without codes_from)")
        self._head[:] = [head]

    @classmethod
    def sharing(cls, head: nn.Module, head_name: str, padding_idx: int | None = None, scale: float = 1.0
                ) -> QuantEmbedding:
        """An embedding that reads the codes of the output head `head` (named `head_name` in the model)."""
        module = cls(head.out_features, head.in_features, head.grid, dtype=head.compute_dtype,
                     padding_idx=padding_idx, codes_from=head_name, scale=scale)
        module.share(head)
        return module

    def layout(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.grid.bits,
                "group_size": self.grid.group_size, "symmetric": self.grid.symmetric, "padding_idx": self.padding_idx,
                "codes_from": self.codes_from, "scale": self.scale}

    @classmethod
    def from_layout(cls, layout: dict, dtype: torch.dtype) -> QuantEmbedding:
        grid = Grid(layout["bits"], layout["group_size"], layout["symmetric"])
        return cls(layout["num_embeddings"], layout["embedding_dim"], grid, dtype=dtype,
                   padding_idx=layout.get("padding_idx"), codes_from=layout.get("codes_from"),
                   scale=layout.get("scale", 1.0))

    @classmethod
    def after_load(cls, model: nn.Module) -> None:
        """Link the tables that read an output head's codes to that head."""
        for module in model.modules():
            if isinstance(module, cls) and module.codes_from is not None:
                module.share(model.get_submodule(module.codes_from))

    @property
    def weight(self) -> Tensor:
        """The whole table, decoded (for code that reads `embedding.weight`; lookups do not)."""
        return self.decode(self.qweight, self.scales, self.zeros)

    def codes(self) -> Tensor:
        """The table's integer codes `[num, dim]`."""
        return unpack(self.qweight, self.grid.bits, self.embedding_dim)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        return self.weight.to(dtype or self.compute_dtype)

    def decode(self, qweight: Tensor, scales: Tensor, zeros: Tensor) -> Tensor:
        codes = unpack(qweight, self.grid.bits, self.embedding_dim).float()
        dim = self.embedding_dim
        return dequantize_codes(codes, expand(scales.float(), dim), expand(zeros.float(), dim)).to(self.compute_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token ids must be in [0, {self.num_embeddings}), got {int(flat.min())}..{int(flat.max())}")
        rows = self.decode(self.qweight[flat], self.scales[flat], self.zeros[flat])
        if self.scale != 1.0:  # in fp32 and cast, as Gemma's scaled embedding computes it
            rows = rows * torch.tensor(self.scale, dtype=torch.float32).to(rows.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.grid.bits}, group={self.grid.group_size}"

    def nbytes(self) -> int:
        """Bytes this table holds (none when it reads the head's codes)."""
        if self.codes_from is not None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))


def embedding_scale(embedding: nn.Module) -> float:
    """The factor an embedding module multiplies its rows by (Gemma's: sqrt(hidden)), else 1."""
    return float(getattr(embedding, "scalar_embed_scale", 1.0))


class ScaledEmbedding(nn.Embedding):
    """A float table whose rows are multiplied by `scale` when looked up (what a dequantized
    scaled QuantEmbedding computes); its state is the table alone, as the model's own class saves it."""

    def __init__(self, weight: Tensor, scale: float, padding_idx: int | None = None):
        super().__init__(weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight, _freeze=True)
        self.scale = scale

    def forward(self, ids: Tensor) -> Tensor:
        rows = super().forward(ids)
        return rows * torch.tensor(self.scale, dtype=torch.float32).to(rows.dtype)
