"""The reference's fixed multi-hot lookup (REFERENCE-DCNV2.md), drawn in chunks.

The reference seeds numpy's legacy global generator with 0 and, for tables
0..25 in order, draws ``np.random.randint(0, N_t, size=(N_t, k_t - 1))`` for
every table with ``k_t > 1``; lookup row r is ``[r, draws[r]]`` and a
sample's bag is ``lookup_t[id % N_t]``. Its draws for the 40M-row tables are
5.8G ids: 23 GB as int32 (the reference keeps them as int64 in RAM).

MT19937's stream cannot be entered in the middle (randint rejects draws
outside the table, so how many words a row takes is not known in advance):
the lookup must be drawn in order, all of it, before any bag of the last
table is known. The draws fill the array row-major and each id takes its
32-bit words straight from the stream, so drawing row blocks one after the
other with the same RandomState gives exactly the one big call's ids (a test
holds them equal); only a block is in memory. The extra columns (not column
0, which is the row itself) go to one int32 file per table, which the
conversion reads memory-mapped; after each table the generator's state is
saved, so an interrupted run resumes at the next table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

LOOKUP_SEED = 0
CHUNK_IDS = 4 << 20  # ids drawn at a time: 32 MB of int64


def draw_blocks(state: np.random.RandomState, rows: int, extra: int,
                chunk_ids: int = CHUNK_IDS) -> Iterator[np.ndarray]:
    """The ``(rows, extra)`` draws of one table, as consecutive row blocks (int64)."""
    step = max(1, chunk_ids // extra)
    for start in range(0, rows, step):
        yield state.randint(0, rows, size=(min(step, rows - start), extra))


def lookup_path(folder: str, table: int) -> str:
    return os.path.join(folder, f"lookup_{table}.bin")


def _state_path(folder: str, table: int) -> str:
    return os.path.join(folder, f"lookup_{table}.state.npz")


def _save_state(path: str, state: np.random.RandomState) -> None:
    name, keys, pos, has_gauss, gauss = state.get_state(legacy=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, keys=keys, pos=pos, has_gauss=has_gauss, gauss=gauss)
    os.replace(tmp, path)


def _load_state(path: str) -> np.random.RandomState:
    state = np.random.RandomState()
    with np.load(path) as s:
        state.set_state(("MT19937", s["keys"], int(s["pos"]), int(s["has_gauss"]), float(s["gauss"])))
    return state


def write_lookups(folder: str, table_sizes: list[int], sizes: list[int], chunk_ids: int = CHUNK_IDS,
                  on_table=lambda table, ids: None) -> None:
    """Draw every table's extra columns into ``folder`` (lookup_T.bin, int32
    rows x (k_T - 1)), skipping the tables an earlier run completed."""
    os.makedirs(folder, exist_ok=True)
    drawing = [t for t, k in enumerate(sizes) if k > 1]
    state = np.random.RandomState(LOOKUP_SEED)
    for t in drawing:
        if os.path.isfile(lookup_path(folder, t)) and os.path.isfile(_state_path(folder, t)):
            state = _load_state(_state_path(folder, t))  # the stream where the next table starts
            continue
        partial = lookup_path(folder, t) + ".partial"
        with open(partial, "wb") as f:
            for block in draw_blocks(state, table_sizes[t], sizes[t] - 1, chunk_ids):
                f.write(block.astype("<i4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        _save_state(_state_path(folder, t), state)
        os.replace(partial, lookup_path(folder, t))
        on_table(t, table_sizes[t] * (sizes[t] - 1))


def open_lookups(folder: str, table_sizes: list[int], sizes: list[int]) -> list[np.ndarray | None]:
    """The extra columns of every table, memory-mapped (None for bags of one)."""
    return [np.asarray(np.memmap(lookup_path(folder, t), dtype="<i4", mode="r", shape=(n, k - 1)))
            if k > 1 else None for t, (n, k) in enumerate(zip(table_sizes, sizes, strict=True))]


def lookup_bytes(table_sizes: list[int], sizes: list[int]) -> int:
    return 4 * sum(n * (k - 1) for n, k in zip(table_sizes, sizes, strict=True))
