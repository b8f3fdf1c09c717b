"""The column sweep GPTQ and SparseGPT share: optimal brain surgeon updates, one column at a time.

Both walk a layer's input columns in lazy blocks, the weight held transposed (`rows`
`[in, out]`: row i is input column i) and `factor` the upper Cholesky factor of the
damped H⁻¹. Inside a block each column takes its target value: zero where it is pruned,
the value of its code where it is quantized. Its error, divided by its pivot (the factor's
diagonal), is recorded and moved onto the block's later columns through the column's row
of the factor; the caller then moves the block's errors onto the columns beyond it in one
matrix product. `sweep` does a run of columns inside one block, in the compiled kernel
(`kernels/obs.c`) where it is built and the tensors are float32 on CPU, else in torch; the
two round alike.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from tcompress.kernels.build import library
from tcompress.quantize.grid import quantize_codes


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
    if not _native_sweep(rows, factor, start, stop, end, errors, keep, scales, zeros, groups, maxq, codes):
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


def _native_sweep(rows: Tensor, factor: Tensor, start: int, stop: int, end: int, errors: Tensor,
                  keep: Tensor | None, scales: Tensor | None, zeros: Tensor | None, groups: Tensor | None,
                  maxq: int, codes: Tensor | None) -> bool:
    """The sweep in the compiled kernel; False (nothing done) where it cannot run."""
    tensors = [t for t in (rows, factor, errors, keep, scales, zeros, groups, codes) if t is not None]
    floats = [t for t in (rows, factor, errors, scales, zeros) if t is not None]
    if (library() is None or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors)
            or any(t.dtype != torch.float32 for t in floats)
            or (groups is not None and groups.dtype != torch.int32)
            or (codes is not None and codes.dtype != torch.uint8) or (keep is not None and keep.dtype != torch.bool)):
        return False
    n = rows.shape[1]
    status = library().tc_obs_sweep(
        rows[start].data_ptr(), n, stop - start, end - start, factor[start, start:].data_ptr(), factor.shape[1],
        None if keep is None else keep[start].data_ptr(), None if scales is None else scales.data_ptr(),
        None if zeros is None else zeros.data_ptr(), None if groups is None else groups[start:].data_ptr(), maxq,
        None if codes is None else codes[start].data_ptr(), errors.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"tc_obs_sweep rejected rows {tuple(rows.shape)}, columns {start}..{stop} of {end}")
    return True
