"""The column sweep GPTQ and SparseGPT share: optimal brain surgeon updates, one column at a time.

Both walk a layer's input columns in lazy blocks, the weight held transposed (`rows`
`[in, out]`: row i is input column i) and `factor` the upper Cholesky factor of the
damped H⁻¹. Inside a block each column takes its target value: zero where it is pruned,
the value of its code where it is quantized. Its error, divided by its pivot (the factor's
diagonal), is recorded and moved onto the block's later columns through the column's row
of the factor; the caller then moves the block's errors onto the columns beyond it in one
matrix product. `sweep` does a run of columns inside one block, in the compiled kernel
(`kernels/obs.c`, through `kernels.obs_sweep`) where it is built and the tensors are float32 on CPU, else in torch; the
two round alike.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from tcompress.kernels.ops import obs_sweep
from tcompress.packed.grid import quantize_codes


def runs(start: int, end: int, *periods: int | None) -> Iterator[tuple[int, int]]:
    """`[start, end)` cut before every multiple of each period (None: no cuts for it), as
    `(first, stop)` pairs: each run can then be swept with one mask and one grid."""
    first = start
    while first < end:
        stop = min([end] + [(first // period + 1) * period for period in periods if period])
        yield first, stop
        first = stop


def sweep(rows: Tensor, factor: Tensor, start: int, stop: int, end: int, errors: Tensor, *,
          keep: Tensor | None = None, scales: Tensor | None = None, zeros: Tensor | None = None,
          groups: Tensor | None = None, maxq: int = 0, codes: Tensor | None = None) -> None:
    """Sweep columns `start` to `stop` - 1 of the lazy block that ends at `end`.

    Each column's weights become zero where `keep` `[in, out]` is False and, with `scales`
    and `zeros` `[groups, out]`, the values of their codes on the grid of the column's group
    (`groups`, int32 `[in]`), written to `codes` (uint8 `[in, out]`; a pruned weight gets its
    group's zero). The column's error divided by its pivot goes to `errors`
    `[stop - start, out]`, and onto columns `stop` to `end` - 1 of `rows` through `factor`.
    """
    if not obs_sweep(rows, factor, start, stop, end, errors, keep, scales, zeros, groups, maxq, codes):
        _torch_sweep(rows, factor, start, stop, end, errors, keep, scales, zeros, groups, maxq, codes)


def _torch_sweep(rows: Tensor, factor: Tensor, start: int, stop: int, end: int, errors: Tensor,
                 keep: Tensor | None, scales: Tensor | None, zeros: Tensor | None, groups: Tensor | None,
                 maxq: int, codes: Tensor | None) -> None:
    pivots = factor.diagonal()
    for i in range(start, stop):
        value = rows[i] if keep is None else rows[i] * keep[i]
        if scales is not None:
            group = int(groups[i])
            scale, zero = scales[group], zeros[group]
            code = quantize_codes(value, scale, zero, maxq)
            if keep is not None:
                code = torch.where(keep[i], code, zero)
            codes[i] = code
            value = (code - zero) * scale
        error = errors[i - start]
        torch.sub(rows[i], value, out=error).div_(pivots[i])
        rows[i + 1 : end].addr_(factor[i, i + 1 : end], error, alpha=-1)
        rows[i] = value
