"""glibc malloc settings for a loop that allocates and frees large numpy
temporaries (the preprocessing's blocks of tens of MB).

By default glibc serves each such allocation with a fresh ``mmap`` and
returns it with ``munmap`` when freed, so every block pays its page faults
again: on the 4M-row preprocessing benchmark that was 15 s of system time in
a 37 s run. Keeping freed memory in the heap (no trimming, a 32 MB mmap
threshold, 256 MB of top padding) lets the next block reuse the same pages:
26-28 s, system time 6-7 s, about 0.5 GB more peak RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Apply the settings; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; 32 MB is glibc's largest mmap threshold on 64-bit.
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 256 << 20)))
