import platform

import pytest

from reference.malloc import keep_freed_memory


def test_malloc_settings_apply_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): the settings are glibc's")
    assert keep_freed_memory() is True
