"""Keep freed memory in the process instead of handing it back to the kernel after every tensor.

On Linux, glibc's ``malloc`` serves every block above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` on ``free``; the heap above ``M_TRIM_THRESHOLD`` is trimmed back too.
A CPU training step of a detector allocates and frees gigabytes in tensors of that size, so every step
faults in fresh zeroed pages: profiled on the 608 px airport images (tiny model, batch 8, one core) that was
9.4 M minor page faults and 12.6 s of kernel time per 6 steps, 23 % of the step (BENCHMARKS.md, "Cost per
image at real sizes"). :func:`keep_freed_memory` turns both off for the current process with ``mallopt``:
the heap grows to the peak of one step and is reused from then on. PyTorch's own CPU allocator has no cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TOP_PAD_BYTES = 256 << 20
_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve large blocks from the heap and never trim it (Linux / glibc only).

    Returns:
        True when the settings are in effect (also on later calls), False where there is no glibc (macOS,
        Windows, musl): nothing changes there.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; -1 for M_TRIM_THRESHOLD means "never trim"
    ok = all(mallopt(option, value) == 1 for option, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, _TOP_PAD_BYTES)))
    if ok:
        logger.info("glibc malloc keeps freed memory (no mmap per block, no heap trimming)")
    _applied = ok
    return ok
