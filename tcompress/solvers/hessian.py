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

    def add(self, x: Tensor) -> None:
        """Accumulate the inputs `x` `[tokens, in]`."""
        add_gram(self.total, x.float())
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        return 2 * symmetric_from_upper(self.total) / max(self.count, 1)


def add_gram(total: Tensor, x: Tensor, block: int = 256) -> None:
    """Add xᵀx to `total` (at least its upper block triangle).

    On the CPU in float32 this is BLAS's symmetric rank-k update (numpy runs xᵀx as one:
    a triangle, then its mirror copied): about 20% faster than the block strips below on
    the default model's 65,536 calibration tokens. Elsewhere: row strips of `block` columns,
    each from its diagonal block on, which skips almost half of the product for wide inputs."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and total.dtype == torch.float32:
        rows = x.detach().contiguous().numpy()
        with numpy_blas().limit(limits=torch.get_num_threads(), user_api="blas"):  # torch's thread count
            total += torch.from_numpy(rows.T @ rows)
        return
    width = x.shape[1]
    for start in range(0, width, block):
        end = min(start + block, width)
        total[start:end, start:].addmm_(x[:, start:end].t(), x[:, start:])


@functools.cache
def numpy_blas() -> ThreadpoolController:
    """The BLAS numpy calls: it takes its thread count from the environment, not from
    `torch.set_num_threads`, unless told."""
    return ThreadpoolController()


def symmetric_from_upper(total: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle is that of `total`."""
    upper = total.triu()
    return upper + upper.triu(1).t()


def inverse_hessian_factor(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, row-major (each column's
    OBS update is one contiguous row)."""
    h = h.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).contiguous()
