"""One checkpoint file: a streamed save, and a load that runs no pickled code
and says, naming the file, why a file is not a checkpoint.

Tensors are streamed between the device and the file: a save lays the file
out with room for every tensor and then copies each into its place through a
shared memory map, and a load maps the file, so tables (90 GiB for Criteo 1TB)
never need as much host memory as they hold: a reader copies the rows it
needs and hands their pages back (rows.py).
"""

from __future__ import annotations

import mmap
import os
import re
import zipfile

import numpy as np
import torch

FORMAT = "dlrm-mlperf-checkpoint"


class CheckpointError(ValueError):
    pass


def save_streamed(state, path: str) -> None:
    """``torch.save(state, path)`` without a host copy of the tensors: the
    file is written with the tensors' bytes left empty, mapped (shared), and
    each tensor copied into its place; the kernel writes the pages back as they
    fill, and fsync makes them durable before the caller renames the file."""
    with torch.serialization.skip_data():
        torch.save(state, path)
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
        placed = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
    _copy_tensors(placed, state)
    del placed  # unmaps the file
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _copy_tensors(into, source) -> None:
    """Copy every tensor of ``source`` into its counterpart in ``into`` (the same structure)."""
    if isinstance(source, torch.Tensor):
        into.copy_(source.detach())
    elif isinstance(source, dict):
        for key, value in source.items():
            _copy_tensors(into[key], value)
    elif isinstance(source, (list, tuple)):
        for a, b in zip(into, source, strict=True):
            _copy_tensors(a, b)


def _numpy_scalar_globals() -> list:
    """What unpickling numpy scalars (as the seed's checkpoints hold) needs:
    the scalar constructor and dtype classes, allowed under both numpy 1 and 2
    module names. Nothing else is allowed, so no arbitrary code can run."""
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
               np.dtype]
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and name.endswith("DType"):
            allowed.append(cls)
    return allowed


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6: a zip archive of the pickle and one record per storage
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a"  # before: a protocol-2 pickle that opens with torch's magic number


def load_file(path: str, mapped: bool = True) -> dict:
    """The dictionary of a file written by ``torch.save``. ``mapped``: its
    tensors stay in the file (memory-mapped, copy-on-write) until something
    copies them, instead of being read whole into host memory (the legacy,
    pre-1.6 format cannot be mapped and is read whole)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == _ZIP_MAGIC:
            raise CheckpointError(f"{path}: truncated or corrupt: it starts as a torch.save zip archive but has "
                                  f"no central directory at its end (a copy or a write that did not finish?)")
        if head != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a checkpoint: neither a torch.save zip archive nor a legacy torch "
                                  f"file (corrupt, or another kind of file)")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped and is_zip)
    except Exception as e:  # torch raises several types for malformed or unsafe files
        raise CheckpointError(f"{path}: cannot load as a weights-only checkpoint: {_reason(e)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a checkpoint: expected a dictionary, got {type(data).__name__}")
    return data


def _reason(e: Exception) -> str:
    """Why torch refused a file, without its advice to retry with
    weights_only=False (which would run whatever code the file holds)."""
    text = str(e)
    unsafe = re.search(r"GLOBAL (\S+)", text)
    if unsafe:
        return (f"it holds a pickled {unsafe.group(1)}, code that loading would run (refused: only tensors and "
                f"plain data load)")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = detail.group(1) if detail else next((line for line in text.splitlines() if line.strip()), type(e).__name__)
    return f"corrupt or truncated ({first.split('. ')[0].strip()})"
