"""Students built from the teacher: fewer blocks and/or a narrower FFN, initialised from
the teacher's own weights (Sanh et al., 2019, DistilBERT, take every other layer).

Blocks kept are spread evenly from first to last; FFN channels kept are those with the
largest weight norms (the product of their input rows and output column), so no data
are needed. For a student chosen by calibration data, prune with `Structured` instead.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tcompress.core.modules import linear_weight
from tcompress.models.adapters import adapter
from tcompress.prune.shrink import drop_blocks, keep_channels


def student_from(teacher: nn.Module, blocks: int | None = None, ffn: int | None = None) -> nn.Module:
    """A copy of `teacher` with `blocks` blocks and FFN width `ffn` (None: unchanged)."""
    parts = adapter(teacher)
    total = len(parts.block_list())
    if blocks is not None and not 1 <= blocks <= total:
        raise ValueError(f"blocks must be between 1 and the teacher's {total}, got {blocks!r}")
    width = _ffn_width(parts)
    if ffn is not None and not 1 <= ffn <= width:
        raise ValueError(f"ffn must be between 1 and the teacher's FFN width {width}, got {ffn!r}")
    student = copy.deepcopy(teacher)
    parts = adapter(student)
    if blocks is not None and blocks < total:
        drop_blocks(student, parts, [i for i in range(total) if i not in evenly_spread(total, blocks)])
    if ffn is not None and ffn < width:
        parts = adapter(student)
        for block in parts.blocks():
            keep_channels(student, block, strongest_channels(block, ffn))
        setattr(student.config, parts.family.ffn_size, ffn)
    return student


def evenly_spread(total: int, count: int) -> list[int]:
    """`count` indices out of `total`, first and last included, evenly apart."""
    if count == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def strongest_channels(block, count: int) -> torch.Tensor:
    """The `count` FFN channels with the largest ||rows in|| * ||column out||, in order."""
    energy = torch.ones(_width_of(block))
    for linear in block.ffn_in.values():
        energy = energy * linear_weight(linear).detach().float().norm(dim=1)
    for linear in block.ffn_out.values():
        energy = energy * linear_weight(linear).detach().float().norm(dim=0)
    return energy.topk(count).indices.sort().values


def _width_of(block) -> int:
    return linear_weight(next(iter(block.ffn_out.values()))).shape[1]


def _ffn_width(parts) -> int:
    if parts.family is None or not parts.family.ffn_size:
        raise ValueError(f"cannot build a student of a {parts.name} model: its adapter does not know its FFN")
    return _width_of(parts.blocks()[0])
