"""glibc malloc settings for a loop that allocates and frees large
temporaries: the preprocessing's numpy blocks of tens of MB, a training
step's activations and gradients (27 MB for the looked-up vectors of a
2048-sample batch of 26 tables).

By default glibc serves each such allocation with a fresh ``mmap`` and
returns it with ``munmap`` when freed (or trims the heap under it), so every
block pays its page faults again: on the 4M-row preprocessing benchmark that
was 15 s of system time in a 37 s run; 200 bf16 training steps of the
embedded default faulted 1,800-15,500 pages a step (glibc moves its
threshold as memory is freed, so it varies from run to run) and took
7.8-11.1 s. Keeping freed memory in the heap (no trimming, a 32 MB mmap
threshold, 256 MB of top padding) lets the next block reuse the same pages:
preprocessing 26-28 s, system time 6-7 s, about 0.5 GB more peak RSS;
training faults nothing after start-up, 8.0-8.3 s (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the settings; False where the C library is not glibc (nothing changes)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; 32 MB is glibc's largest mmap threshold on 64-bit.
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 256 << 20)))


def release_freed_memory() -> bool:
    """Give the heap's free memory back to the system now (glibc malloc_trim),
    for when large buffers were freed for good: with the settings above the
    heap would otherwise keep them. False where there is no malloc_trim."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
