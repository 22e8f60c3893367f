"""What the CPU says about itself in /proc/cpuinfo (Linux): model, vendor, flags.

Read in one place for the kernel choice, the benchmarks and the system
description of a submission; elsewhere (no /proc) every field is empty and
the model falls back to what ``platform`` knows.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class CPUInfo:
    model: str
    vendor: str
    flags: frozenset[str]


@functools.cache
def cpu_info(path: str = "/proc/cpuinfo") -> CPUInfo:
    """The first processor's entry (every core of a machine reports the same)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's entry
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return CPUInfo(model=fields.get("model name") or platform.processor() or platform.machine(),
                   vendor=fields.get("vendor_id", ""), flags=frozenset(fields.get("flags", "").split()))
