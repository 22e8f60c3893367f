"""The MLPerf DLRM binary format, shared by the writers (preprocessing,
synthetic data) and the loader: each sample is 40 little-endian int32
(label, 13 dense integer features, 26 categorical ids), with the table sizes
in a ``*_fea_count.npz`` counts file (key ``counts``). No torch here, so the
preprocessing does not pay for importing it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
COLUMNS = 1 + NUM_DENSE + NUM_SPARSE
RECORD_BYTES = 4 * COLUMNS
# How the stored dense integers become the model's input: log(x + 1) of values clamped at 0
# (DLRM v1), or ln(x + 3) of the integers as they are (the DLRMv2 reference's, --semantics dcnv2).
DENSE_TRANSFORMS = ("log1p", "log3")


def dense_log3(dense: np.ndarray) -> np.ndarray:
    """ln(x + 3), computed in float64 and rounded once to float32."""
    return np.log(dense.astype(np.float64) + 3.0).astype(np.float32)


class DataError(ValueError):
    """A data file is missing, malformed, or disagrees with the model."""


def map_records(path: str, words: int, kind: str, ragged: str) -> np.memmap:
    """A file of fixed-size records of ``words`` little-endian 4-byte words,
    mapped read-only as (samples, words). A missing or empty file, or one whose
    size is not a whole number of records (``ragged`` says what that means), is
    a DataError naming it; ``kind`` names what the file should be."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {kind} file not found")
    size = os.path.getsize(path)
    if size % (4 * words):
        raise DataError(f"{path}: size {size} bytes is not a multiple of {4 * words} ({ragged})")
    if size == 0:
        raise DataError(f"{path}: file holds no samples")
    return np.memmap(path, dtype="<i4", mode="r", shape=(size // (4 * words), words))


def table_limits(path: str, table_sizes: list[int] | None, holds: str) -> np.ndarray | None:
    """The row count of each table, to check ids against; None: unchecked."""
    if table_sizes is None:
        return None
    if len(table_sizes) != NUM_SPARSE:
        raise DataError(f"{path}: the model has {len(table_sizes)} tables but the file holds {NUM_SPARSE} {holds}")
    return np.asarray(table_sizes, dtype=np.int64)


def load_counts(path: str) -> list[int]:
    """Table sizes from a ``*_fea_count.npz`` file (key ``counts``)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: counts file not found")
    with np.load(path) as data:
        if "counts" not in data:
            raise DataError(f"{path}: no array named 'counts' (has: {', '.join(data.files)})")
        counts = data["counts"]
    if counts.ndim != 1 or counts.size == 0 or (counts <= 0).any():
        raise DataError(f"{path}: 'counts' must be a 1-D array of positive table sizes, got {counts!r}")
    return [int(c) for c in counts]


def write_counts(path: str, counts: list[int]) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, counts=np.asarray(counts, dtype=np.int32))
    os.replace(tmp, path)


def write_binary(path: str, chunks: Iterator[np.ndarray]) -> int:
    """Write (n, 40) int32 chunks to ``path`` atomically; returns the row count."""
    tmp = path + ".tmp"
    rows = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            if chunk.ndim != 2 or chunk.shape[1] != COLUMNS:
                raise ValueError(f"expected chunks of shape (n, {COLUMNS}), got {chunk.shape}")
            f.write(np.ascontiguousarray(chunk, dtype="<i4").tobytes())
            rows += chunk.shape[0]
    os.replace(tmp, path)
    return rows
