"""Freed memory is reused inside `reuse_freed_memory` (no page faults for a repeated large
tensor) and handed back to the system after it."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from tcompress.runtime.heap import reuse_freed_memory


def page_faults(action) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    action()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def touch_256_mb() -> None:
    torch.ones(64 * 2**20).sum()  # above any threshold glibc may have moved to


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_tensors_reuse_the_heap_inside_only():
    touch_256_mb()
    pages = 256 * 2**20 // resource.getpagesize()
    assert page_faults(touch_256_mb) >= pages // 2  # fresh pages from the kernel each time
    with reuse_freed_memory():
        touch_256_mb()
        assert page_faults(touch_256_mb) < pages // 10
        with reuse_freed_memory():  # nested: the outer one stays in charge
            pass
        assert page_faults(touch_256_mb) < pages // 10
    assert page_faults(touch_256_mb) >= pages // 2  # defaults back, the heap trimmed
