"""`keep_freed_memory`: large tensors reuse the heap instead of faulting in fresh pages every time."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from sl_detr_hf.training.allocator import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory() and keep_freed_memory()
x = torch.ones(64 << 18)  # 64 MiB: served by mmap by default
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(64 << 18)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    default, kept = _faults("off"), _faults("on")
    # 20 x 64 MiB freshly mapped: 20 * 16384 pages of 4 KiB (fewer with huge pages, still thousands)
    assert default > 5_000
    # kept: the heap is reused. A kernel that reclaims idle memory on its own (DAMON's proactive reclaim, on in
    # some VMs) may take the freed heap's pages back once, so that one of the twenty faults in again (16,384
    # faults measured there, on every run): at most a few of the twenty, against all twenty by default
    assert kept < default / 5
