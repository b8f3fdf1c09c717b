"""Per-input-channel scales moved from a group of linears onto what feeds them.

AWQ and SmoothQuant multiply the input channels of a group of linears that read one tensor
(q, k and v; gate and up; ...) by `s`, and divide that tensor by `s` where it is produced,
so the float model computes exactly what it did. Where the tensor comes from a norm (pre-norm
blocks) or from a linear whose output reaches the group through linear steps (v through the
attention mix; up through the gated product; fc1 through ReLU), `1/s` is folded into that
module's weights. Elsewhere (post-norm blocks, whose norm output is also the residual; GELU
between two linears; grouped-query attention, where one v channel feeds several o inputs)
there is no such place, and the division must stay as an explicit input scale of the
group's linears (`source is None`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from tcompress.core.modules import is_linear, linear_weight
from tcompress.models.adapters import Adapter, Block

PARTS = ("attn_in", "attn_out", "ffn_in", "ffn_out")


@dataclass
class InputGroup:
    """Linears fed one tensor, where that tensor is produced, and where their error shows."""

    part: str  # attn_in, attn_out, ffn_in or ffn_out (or the linear's name, in a model of no known family)
    linears: dict[str, nn.Module]  # full names -> linears
    source: nn.Module | None  # a norm, or a linear whose output `rows` feed the group; None: not foldable
    rows: slice | None  # the source linear's output rows that are this input (a fused qkv's v part)
    inspect: nn.Module | None  # the module whose output the group's error shows in; None: the linears'
    norm_offset: float = 0.0  # a norm source multiplies by (norm_offset + weight)

    @property
    def in_features(self) -> int:
        return linear_weight(next(iter(self.linears.values()))).shape[1]


def input_groups(adapter: Adapter, block: Block) -> list[InputGroup]:
    """The block's groups of linears with a shared input, in the order they run."""
    family = adapter.family
    groups = []
    for part in PARTS:
        linears = getattr(block, part)
        if linears:
            source, rows = _source(adapter, block, part, linears)
            groups.append(InputGroup(part, linears, source, rows, _inspect(family, block, part), family.norm_offset))
    # a model of no known family: each linear a group by itself, with nothing to fold into
    groups += [InputGroup(name, {name: linear}, None, None, None) for name, linear in block.other.items()]
    return groups


def _inspect(family, block: Block, part: str) -> nn.Module | None:
    path = {"attn_in": family.attention, "ffn_in": family.mlp}.get(part)
    return block.module.get_submodule(path) if path else None


def _source(adapter: Adapter, block: Block, part: str, linears: dict[str, nn.Module]
            ) -> tuple[nn.Module | None, slice | None]:
    family, module = adapter.family, block.module
    width = linear_weight(next(iter(linears.values()))).shape[1]
    pre_norm = family.attn_norm is not None
    if part in ("attn_in", "ffn_in"):
        norm = block.attn_norm if part == "attn_in" else block.ffn_norm
        return (norm, None) if pre_norm and _scalable_norm(norm, width) else (None, None)
    path = family.v_source if part == "attn_out" else family.ffn_out_source
    if path is None or (part == "ffn_out" and family.name == "opt" and not _relu(adapter)):
        return None, None
    producer = module.get_submodule(path)
    out_features = linear_weight(producer).shape[0]
    if out_features == width:
        return producer, None
    if part == "attn_out" and out_features == 3 * width:  # fused q, k, v: v is the last third
        return producer, slice(2 * width, 3 * width)
    return None, None  # e.g. grouped-query attention: fewer v channels than o inputs


def _scalable_norm(norm: nn.Module | None, width: int) -> bool:
    """A norm computing `(offset + weight) * normalized(x) (+ bias)` over `width` channels (the
    family's `norm_offset`: 1 for Gemma's), so scaling its weight and bias scales its output."""
    weight = getattr(norm, "weight", None)
    return isinstance(weight, Tensor) and weight.shape == (width,)


def _relu(adapter: Adapter) -> bool:
    return getattr(adapter.config, "activation_function", None) == "relu"


def fold(group: InputGroup, s: Tensor) -> None:
    """Multiply the group's input channels by `s` and divide their source's output by it."""
    if group.source is None:
        raise ValueError(f"{group.part}: nothing to fold a scale into; keep it as an explicit input scale")
    s = s.float()
    source = group.source
    if is_linear(source):
        weight, rows = linear_weight(source), group.rows or slice(None)
        weight[rows].div_(s[:, None].to(weight.dtype))
        if source.bias is not None:
            source.bias[rows].div_(s.to(source.bias.dtype))
    else:  # a norm multiplying by (offset + weight): that factor is what is divided
        offset = group.norm_offset
        source.weight.copy_(((offset + source.weight.float()) / s - offset).to(source.weight.dtype))
        if getattr(source, "bias", None) is not None:
            source.bias.div_(s.to(source.bias.dtype))
    scale_inputs(group.linears, s)


def scale_inputs(linears: dict[str, nn.Module], s: Tensor) -> None:
    """Multiply each linear's input channels (weight columns) by `s`."""
    for linear in linears.values():
        weight = linear_weight(linear)
        weight.mul_(s[None, :].to(weight.dtype))
