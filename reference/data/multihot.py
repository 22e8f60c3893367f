"""The multi-hot binary format (MLPerf ``dlrm_dcnv2``'s bags of a fixed size per
table), shared by its writers (``python -m reference.preprocess multihot``,
reference/synthetic.py) and the loader (multihot_dataset.py).

A sample is ``1 + 13 + sum(sizes)`` little-endian 4-byte words: the label
(int32 0/1), the 13 dense features as float32 *already transformed* (log(x + 1)
or the reference's ln(x + 3), chosen when the file was made, so the loader
applies nothing), then the ids of table 0's bag (``sizes[0]`` int32), table 1's
bag, ... table 25's. Every bag of a table has the same length, so a batch is one
contiguous slice of the file and the layout needs no offsets. The per-table
hotness ``sizes`` and the table sizes travel in the counts file (keys
``counts`` and ``multihot_sizes``), which the loader checks the config against.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .binary import NUM_DENSE, NUM_SPARSE, DataError

# The reference's hotness per table (REFERENCE-DCNV2.md): 214 ids per sample.
DCNV2_MULTIHOT_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
ID_START = 1 + NUM_DENSE  # the word where table 0's bag starts


def check_sizes(sizes: list[int], where: str) -> list[int]:
    sizes = [int(k) for k in sizes]
    if len(sizes) != NUM_SPARSE or min(sizes) < 1:
        raise DataError(f"{where}: multi-hot sizes must be {NUM_SPARSE} bag lengths >= 1, got {sizes}")
    return sizes


def record_words(sizes: list[int]) -> int:
    return ID_START + sum(sizes)


def bag_starts(sizes: list[int]) -> np.ndarray:
    """The word of each table's first id in a record, then the record's width."""
    return ID_START + np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def load_multihot_sizes(path: str) -> list[int]:
    """The hotness per table from a counts file (key ``multihot_sizes``)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: counts file not found")
    with np.load(path) as data:
        if "multihot_sizes" not in data:
            raise DataError(f"{path}: no array named 'multihot_sizes': not the counts file of multi-hot data "
                            f"(python -m reference.preprocess multihot writes it)")
        return check_sizes(list(data["multihot_sizes"]), path)


def write_multihot_counts(path: str, counts: list[int], sizes: list[int]) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, counts=np.asarray(counts, dtype=np.int32), multihot_sizes=np.asarray(sizes, dtype=np.int32))
    os.replace(tmp, path)


def pack(labels: np.ndarray, dense: np.ndarray, bags: np.ndarray) -> np.ndarray:
    """Records (n, words) int32 from labels (n,), transformed dense features
    (n, 13) float32 and the bags of every table side by side (n, sum(sizes))."""
    n = labels.shape[0]
    out = np.empty((n, ID_START + bags.shape[1]), dtype="<i4")
    out[:, 0] = labels
    out[:, 1:ID_START] = np.ascontiguousarray(dense, dtype="<f4").view("<i4")
    out[:, ID_START:] = bags
    return out


def write_multihot(path: str, chunks: Iterator[np.ndarray], sizes: list[int]) -> int:
    """Write record chunks (n, record_words(sizes)) to ``path`` atomically; returns the row count."""
    words = record_words(sizes)
    tmp = path + ".tmp"
    rows = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            if chunk.ndim != 2 or chunk.shape[1] != words:
                raise ValueError(f"expected chunks of shape (n, {words}), got {chunk.shape}")
            f.write(np.ascontiguousarray(chunk, dtype="<i4").tobytes())
            rows += chunk.shape[0]
    os.replace(tmp, path)
    return rows
