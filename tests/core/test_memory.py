"""Freed memory is reused inside `reuse_freed_memory` (no page faults for a repeated large
tensor) and handed back to the system after it. Checked in a fresh process: what earlier
tests did to this one's allocator (a thread moved to another arena, a heap grown past the
trim threshold) must not decide the outcome."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = """
import json, resource
import torch
from tcompress.core.memory import reuse_freed_memory

def page_faults(action):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    action()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def touch_256_mb():
    torch.ones(64 * 2**20).sum()  # above any threshold glibc may have moved to

touch_256_mb()
faults = {"before": page_faults(touch_256_mb)}
with reuse_freed_memory():
    touch_256_mb()
    faults["inside"] = page_faults(touch_256_mb)
    with reuse_freed_memory():  # nested: the outer one stays in charge
        pass
    faults["inside after nesting"] = page_faults(touch_256_mb)
faults["after"] = page_faults(touch_256_mb)
faults["pages"] = 256 * 2**20 // resource.getpagesize()
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_tensors_reuse_the_heap_inside_only():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    pages = faults["pages"]
    assert faults["before"] >= pages // 2  # fresh pages from the kernel each time
    assert faults["inside"] < pages // 10
    assert faults["inside after nesting"] < pages // 10
    assert faults["after"] >= pages // 2  # defaults back, the heap trimmed
