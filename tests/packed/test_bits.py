"""Dense bit packing: round trips at every width and odd shape, and the byte counts."""

import pytest
import torch

from tcompress.packed.bits import pack, packed_bytes_per_row, unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(63, 100), (5, 7), (1, 1)])
def test_packing_round_trips_for_every_width_and_odd_shape(bits, shape):
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits), dtype=torch.int64)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], packed_bytes_per_row(shape[1], bits))
    assert torch.equal(unpack(packed, bits, shape[1]), codes.to(torch.uint8))


def test_packed_sizes_are_dense():
    assert packed_bytes_per_row(64, 4) == 32 and packed_bytes_per_row(64, 2) == 16
    assert packed_bytes_per_row(64, 3) == 24 and packed_bytes_per_row(64, 8) == 64
    assert pack(torch.tensor([[1, 2]]), 4).tolist() == [[0x21]]  # first code in the low nibble
