"""Keep glibc from hoarding freed tensor buffers.

glibc raises its mmap threshold dynamically after large frees, after which multi-megabyte
tensor buffers come from per-thread heaps that are not returned to the OS; with reader and
writer threads, RSS then creeps up by several tensors' worth. Pinning the threshold makes
every large buffer its own mapping, released on free, so peak RSS tracks the live working set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
_done = False


def release_large_buffers_to_os(threshold: int = 1 << 20) -> bool:
    """Serve allocations ≥ ``threshold`` bytes with mmap (glibc only); True when applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    return _done
