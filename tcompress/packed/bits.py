"""Dense bit packing of integer codes along each row.

Codes of `bits` bits are packed densely along each row: `k = lcm(bits, 8) / bits` codes
fill `lcm(bits, 8) / 8` bytes (two 4-bit codes per byte, four 2-bit codes per byte, eight
3-bit codes per three bytes, one 8-bit code per byte, one bit a mask entry), the first code
in the lowest bits. A row of `in` codes takes `ceil(in / k) * lcm / 8` bytes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def codes_per_chunk(bits: int) -> tuple[int, int]:
    """(codes, bytes) of the smallest whole-byte chunk."""
    lcm = math.lcm(bits, 8)
    return lcm // bits, lcm // 8


def packed_bytes_per_row(in_features: int, bits: int) -> int:
    codes, nbytes = codes_per_chunk(bits)
    return -(-in_features // codes) * nbytes


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack codes `[rows, n]` (values < 2^bits) into bytes `[rows, packed_bytes_per_row]`."""
    rows, n = codes.shape
    per_chunk, nbytes = codes_per_chunk(bits)
    padded = torch.zeros(rows, -(-n // per_chunk) * per_chunk, dtype=torch.int64, device=codes.device)
    padded[:, :n] = codes.to(torch.int64)
    chunks = padded.view(rows, -1, per_chunk)
    shifts = torch.arange(per_chunk, device=codes.device) * bits
    words = (chunks << shifts).sum(dim=-1)  # [rows, chunks], at most 24 bits used
    byte_shifts = torch.arange(nbytes, device=codes.device) * 8
    return ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).view(rows, -1)


def unpack(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of `pack`: codes `[rows, n]` as uint8."""
    rows = packed.shape[0]
    if 8 % bits == 0:  # whole codes per byte: stay in uint8
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        codes = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)  # [rows, bytes, codes per byte]
        return codes.view(rows, -1)[:, :n]
    per_chunk, nbytes = codes_per_chunk(bits)
    byte_shifts = torch.arange(nbytes, device=packed.device) * 8
    words = (packed.view(rows, -1, nbytes).to(torch.int64) << byte_shifts).sum(dim=-1)
    shifts = torch.arange(per_chunk, device=packed.device) * bits
    codes = (words.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.view(rows, -1)[:, :n].to(torch.uint8)
