import platform

import pytest

from reference.malloc import keep_freed_memory


def test_malloc_settings_apply_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): the settings are glibc's")
    assert keep_freed_memory() is True


def test_freed_heap_memory_goes_back_to_the_system():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): malloc_trim is glibc's")
    import subprocess
    import sys
    # In a fresh process: 40 blocks of 8 MB (under the mmap threshold, so from the heap) are
    # freed; the heap keeps them until release_freed_memory() trims it.
    code = """
import numpy as np
from reference.malloc import keep_freed_memory, release_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
keep_freed_memory()
blocks = [np.ones(8 << 20, np.uint8) for _ in range(40)]
del blocks
kept = rss_mb()
assert release_freed_memory()
print(kept, rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    kept, released = float(out[0]), float(out[1])
    assert kept - released > 250, (kept, released)
