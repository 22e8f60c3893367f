"""Write a JSON file so that a reader never sees half of it.

The preprocessing's resume records, the run summary, the synthetic data's
metadata and the verification report are read back by later runs or other
tools: a crash mid-write must leave the old file or none, never a torn one.
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, data: Any, indent: int = 1) -> None:
    # A name of this process's own, renamed over the target: rename is atomic on one file system.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
