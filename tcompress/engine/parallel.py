"""Data-parallel calibration on torch.distributed, as `accelerate launch` sets it up.

Under `accelerate launch --num_processes N` (gloo on CPUs, NCCL on GPUs) each process runs
its share of the calibration batches through each block; before a linear changes, the
statistics a per-linear method gathered (Hessians, input norms, maxima) are summed across
the processes, so every process makes the same change and the model every process ends with
is the one-process result, float summation order aside. A per-block method (a scale search
over the block's outputs) runs every batch in every process: the same result, not faster.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

Combine = Callable[[Any], Any]  # a linear's statistics from this process's share -> from every process's


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 when not launched as several)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState  # optional: only a launched run needs it

        PartialState()  # joins the process group the launcher described
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(batches: list[Any], rank: int, size: int) -> list[Any]:
    """Process `rank`'s contiguous share of the batches (the first ones take one more where they do not divide)."""
    if size > len(batches):
        raise ValueError(f"{size} processes need at least as many calibration batches; there are {len(batches)}")
    base, extra = divmod(len(batches), size)
    start = rank * base + min(rank, extra)
    return batches[start : start + base + (rank < extra)]


def combiner(reduction: str) -> Combine:
    """Statistics summed (`reduction` "sum") or maxed ("max") across the processes, in place."""
    op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[reduction]

    def combine(stats: Any) -> Any:
        if isinstance(stats, Tensor):
            dist.all_reduce(stats, op=op)
            return stats
        if dataclasses.is_dataclass(stats):
            for field in dataclasses.fields(stats):
                value = getattr(stats, field.name)
                if isinstance(value, Tensor):
                    dist.all_reduce(value, op=op)
                elif isinstance(value, int) and not isinstance(value, bool):
                    count = torch.tensor([value], dtype=torch.int64)
                    dist.all_reduce(count, op=op)
                    setattr(stats, field.name, int(count))
            return stats
        if stats is None:
            return None
        raise TypeError(f"statistics of type {type(stats).__name__} cannot be combined across processes: "
                        "use a tensor or a dataclass of tensors and counts")

    return combine
