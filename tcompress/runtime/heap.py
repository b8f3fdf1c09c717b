"""Reuse of freed memory during passes that allocate the same large tensors again and again.

glibc serves every allocation above 32 MB (one layer's activations over a calibration set
are hundreds of MB) with fresh pages from the kernel and hands them back on free, so each
such tensor pays a page fault per 4 KiB page on first touch. On a 2-core CPU, GPTQ W4 on the
default model took 316 s without reuse and 281 s with it (40 s and 30 s on its first three
blocks), for a peak RSS of 5.8 GB instead of 3.6 GB: freed fragments stay until the pass
ends. Where the C library is not glibc, nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 — glibc has both
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside, large blocks come from the heap and stay there when freed, to be reused
    without page faults; on leaving (the outermost use), glibc's defaults come back and the
    heap is trimmed, so the memory returns to the system."""
    global _depth
    libc = _glibc() if _depth == 0 else None  # the outermost use sets and restores
    if libc is not None and not libc.mallopt(M_MMAP_MAX, 0):
        libc = None
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if libc is not None:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
