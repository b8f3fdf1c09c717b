"""The Hessian of a layer's squared output error, H = 2 X Xᵀ / n over its calibration inputs,
and the damped inverse's Cholesky factor: what GPTQ and SparseGPT share."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from threadpoolctl import ThreadpoolController
from torch import Tensor


@dataclass
class HessianStats:
    total: Tensor  # sum of x xᵀ, [in, in], float32; only its upper block triangle is sure to be accumulated
    count: int = 0
    final: bool = False  # `total` has become the Hessian itself: no more inputs

    def add(self, x: Tensor) -> None:
        """Accumulate the inputs `x` `[tokens, in]`."""
        if self.final:
            raise RuntimeError("the Hessian was already taken from these statistics: they take no more inputs")
        add_gram(self.total, x.float())
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        """2 XᵀX / n, made from the sum in place the first time (an [in, in] matrix is not copied:
        8192 inputs make 268 MB), the same tensor after; treat it as read-only."""
        if not self.final:
            symmetric_from_upper_(self.total)
            self.total.mul_(2).div_(max(self.count, 1))
            self.final = True
        return self.total


def add_gram(total: Tensor, x: Tensor, block: int = 256) -> None:
    """Add xᵀx to `total` (at least its upper block triangle).

    On the CPU in float32 this is BLAS's symmetric rank-k update (numpy runs xᵀx as one:
    a triangle, then its mirror copied): about 20% faster than the block strips below on
    the default model's 65,536 calibration tokens. Elsewhere, and for inputs so wide that the
    product's temporary would be large: row strips of `block` columns,
    each from its diagonal block on, which skips almost half of the product for wide inputs."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and total.dtype == torch.float32 and width_fits(total):
        rows = x.detach().contiguous().numpy()
        with numpy_blas().limit(limits=torch.get_num_threads(), user_api="blas"):  # torch's thread count
            total += torch.from_numpy(rows.T @ rows)
        return
    width = x.shape[1]
    for start in range(0, width, block):
        end = min(start + block, width)
        total[start:end, start:].addmm_(x[:, start:end].t(), x[:, start:])


def width_fits(total: Tensor, limit: int = 64 * 2**20) -> bool:
    """Whether numpy's product, a temporary of the size of `total`, is small enough to make
    (an 8,192-wide input's would be 268 MB on every batch; the strips below need none)."""
    return total.numel() * total.element_size() <= limit


@functools.cache
def numpy_blas() -> ThreadpoolController:
    """The BLAS numpy calls: it takes its thread count from the environment, not from
    `torch.set_num_threads`, unless told."""
    return ThreadpoolController()


def symmetric_from_upper(total: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle is that of `total`."""
    return symmetric_from_upper_(total.clone())


def symmetric_from_upper_(total: Tensor) -> Tensor:
    """`total` made, in place, the symmetric matrix of its upper triangle (one strict triangle's copy at a time)."""
    total.triu_()
    total.add_(total.triu(1).t())
    return total


def inverse_hessian_factor(h: Tensor, damp: float, overwrite: bool = False) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, row-major (each column's
    OBS update is one contiguous row). `overwrite`: damp `h` itself instead of a copy."""
    h = h.clone() if not overwrite else h
    h.diagonal().add_(damp * h.diagonal().mean())
    # each step in place (LAPACK's potrf and potri work so): one [in, in] matrix, not four
    torch.linalg.cholesky(h, out=h)
    torch.cholesky_inverse(h, out=h)
    torch.linalg.cholesky(h, upper=True, out=h)
    return h.triu_()
