"""HQQ: calibration-free quantization on grids whose zero points are optimised by
half-quadratic splitting (Badri & Shaji, 2023); the solver is `packed/hqq.py`."""

from __future__ import annotations

from dataclasses import dataclass

from tcompress.engine.method import option, register
from tcompress.quantize.rtn import RTN


@register
@dataclass(frozen=True)
class HQQ(RTN):
    """Round-to-nearest on grids whose zero points HQQ optimised; no calibration data."""

    name = "hqq"
    search: str = option("hqq", "HQQ's search is 'hqq' (use rtn for the others)", choices=("hqq",))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search != "hqq":
            raise ValueError(f"HQQ's search is 'hqq'; for search={self.search!r} use RTN")
