"""One-hot binary files -> multi-hot binary files (``python -m reference.preprocess multihot``).

Stages, each resumable (temporary names, renamed when complete):
  1. lookups: the reference's fixed per-table lookup (lookup.py), drawn in
     chunks into ``multihot_work/`` (23 GB of int32 for Criteo 1TB's sizes);
  2. convert: each split (train, test, val) is streamed in blocks; every
     sample's bag of table t is ``[id, lookup_t[id]]`` and its dense features
     are transformed as its semantics say (v1: log(x + 1); dcnv2: ln(x + 3)),
     written in the layout of reference/data/multihot.py. Progress is synced
     to disk every GB; a resumed run truncates the partial file to the last
     synced sample and goes on from there. The output rows do not depend on
     the block size, the threads or the interruptions;
  3. finish: counts file (table sizes and bag lengths) and a manifest with the
     rows and sha256 of every output; the work folder is removed.
Memory: one block of samples (32,768: 30 MB of output records at the
reference's 214 ids) and a chunk of draws (32 MB) besides the lookups, which are
memory-mapped: their pages are file cache the kernel can drop, not the
process's own memory. The conversion reads them at random, so at disk speed
unless the page cache holds them (23 GB for Criteo 1TB).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numba
import numpy as np
from tqdm import tqdm

from ..data.binary import COLUMNS, NUM_DENSE, NUM_SPARSE, RECORD_BYTES, dense_log3, load_counts
from ..data.multihot import bag_starts, check_sizes, record_words, write_multihot_counts
from ..jsonfile import write_json
from .lookup import lookup_bytes, open_lookups, write_lookups
from .options import SEMANTICS, PreprocessError

SPLITS = ("train", "test", "val")
OUTPUTS = {"train": "multihot_train.bin", "test": "multihot_test.bin", "val": "multihot_val.bin",
           "counts": "multihot_fea_count.npz", "manifest": "multihot_manifest.json"}
WORK = "multihot_work"
BLOCK_ROWS = 32768
SYNC_BYTES = 1 << 30  # progress made durable this often: what a crash can cost


@dataclass(frozen=True)
class MultiHotOptions:
    sizes: list
    semantics: str
    inputs: dict  # split -> [file name, bytes, mtime_ns]: a resumed run must read the same files


def find_onehot(folder: str) -> tuple[dict[str, str], str, str | None]:
    """The one-hot splits of ``folder`` (``*_train.bin`` ...), its counts file,
    and the semantics its preprocessing manifest names (None without one)."""
    if not os.path.isdir(folder):
        raise PreprocessError(f"{folder}: input folder not found")
    splits = {}
    for split in SPLITS:
        found = sorted(p for p in glob.glob(os.path.join(folder, f"*_{split}.bin"))
                       if not os.path.basename(p).startswith("multihot_"))
        if len(found) > 1:
            raise PreprocessError(f"{folder}: several {split} files ({', '.join(map(os.path.basename, found))})")
        if found:
            splits[split] = found[0]
    counts = sorted(p for p in glob.glob(os.path.join(folder, "*_fea_count.npz"))
                    if not os.path.basename(p).startswith("multihot_"))
    if not splits or len(counts) != 1:
        raise PreprocessError(f"{folder}: expected one-hot binary files (*_train.bin, *_test.bin, *_val.bin) and "
                              f"one *_fea_count.npz, found {len(splits)} splits and {len(counts)} counts files")
    semantics = None
    manifest = os.path.join(folder, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            semantics = json.load(f).get("options", {}).get("semantics", "v1")
    return splits, counts[0], semantics


def transform_dense(dense: np.ndarray, semantics: str, path: str, first_row: int) -> np.ndarray:
    """The model's dense input from the stored integers: v1 log(x + 1) as the
    one-hot loader computes it (float32), dcnv2 ln(x + 3) (rounded once to float32)."""
    if semantics == "dcnv2":
        return dense_log3(dense)
    if (dense < 0).any():
        row = first_row + int(np.argwhere(dense < 0)[0, 0])
        raise PreprocessError(f"{path}: sample {row} has a negative dense feature, which v1 files store clamped "
                              f"at 0 (files made with --semantics dcnv2 keep them: use --semantics dcnv2)")
    return np.log1p(dense, dtype=np.float32)


@numba.njit(nogil=True, cache=True)
def _fill_bags(block, table, limit, extra, out, col):  # pragma: no cover (compiled)
    """out[i, col:col + 1 + k] = [id, extra[id]] for the ids of column ``table``
    of the one-hot ``block``; returns the first row whose id is outside
    [0, limit), or -1."""
    for i in range(block.shape[0]):
        v = block[i, 1 + NUM_DENSE + table]
        if v < 0 or v >= limit:
            return i
        out[i, col] = v
        for j in range(extra.shape[1]):
            out[i, col + 1 + j] = extra[v, j]
    return -1


class MultiHot:
    def __init__(self, inp: str, out: str, sizes: list[int], semantics: str | None = None, workers: int = 1,
                 progress: bool = True, block_rows: int = BLOCK_ROWS):
        self.splits, self.counts_path, found = find_onehot(inp)
        if semantics is not None and found is not None and semantics != found:
            raise PreprocessError(f"{inp}: its manifest says the files were made with --semantics {found}, "
                                  f"not {semantics}")
        semantics = semantics or found or "v1"
        if semantics not in SEMANTICS:
            raise PreprocessError(f"semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
        self.table_sizes = load_counts(self.counts_path)
        if len(self.table_sizes) != NUM_SPARSE:
            raise PreprocessError(f"{self.counts_path}: {len(self.table_sizes)} tables, expected {NUM_SPARSE}")
        inputs = {s: [os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for s, p in self.splits.items()}
        self.o = MultiHotOptions(check_sizes(sizes, "--sizes"), semantics, inputs)
        self.out, self.work = out, os.path.join(out, WORK)
        self.threads, self.progress, self.block_rows = max(1, workers), progress, block_rows
        self.starts = bag_starts(self.o.sizes)
        self.words = record_words(self.o.sizes)

    def check_before_start(self) -> dict | None:
        """The finished manifest when ``out`` already holds this very run; refuses another's."""
        manifest = os.path.join(self.out, OUTPUTS["manifest"])
        if os.path.isfile(manifest):
            with open(manifest) as f:
                done = json.load(f)
            if done.get("options") == asdict(self.o):
                return done
            raise PreprocessError(f"{self.out}: holds multi-hot files made with other options "
                                  f"({done.get('options')}); choose another --out")
        options = os.path.join(self.work, "options.json")
        if os.path.isfile(options):
            with open(options) as f:
                if json.load(f) != asdict(self.o):
                    raise PreprocessError(f"{self.work}: an interrupted run with other options or inputs is there; "
                                          f"rerun it the same way or remove {self.work}")
        for path in self.splits.values():
            if os.path.getsize(path) % RECORD_BYTES:
                raise PreprocessError(f"{path}: size {os.path.getsize(path)} bytes is not a multiple of "
                                      f"{RECORD_BYTES} (40 int32 per sample): truncated or not a one-hot file")
        os.makedirs(self.out, exist_ok=True)
        rows = sum(os.path.getsize(p) // RECORD_BYTES for p in self.splits.values())
        need = rows * 4 * self.words + lookup_bytes(self.table_sizes, self.o.sizes)
        free = shutil.disk_usage(self.out).free
        if need > free:
            raise PreprocessError(f"{self.out}: about {need / 1e9:.1f} GB needed (outputs plus lookups), "
                                  f"{free / 1e9:.1f} GB free")
        return None

    def run(self) -> dict:
        done = self.check_before_start()
        if done is not None:
            return done
        os.makedirs(self.work, exist_ok=True)
        write_json(os.path.join(self.work, "options.json"), asdict(self.o))
        started = time.time()
        total = lookup_bytes(self.table_sizes, self.o.sizes) // 4
        bar = tqdm(total=total, unit="id", unit_scale=True, desc="1/2 lookups", disable=not self.progress,
                   file=sys.stderr)
        write_lookups(self.work, self.table_sizes, self.o.sizes, on_table=lambda t, ids: bar.update(ids))
        bar.close()
        stages = {"lookups": time.time() - started}
        lookups = open_lookups(self.work, self.table_sizes, self.o.sizes)
        files, rows = {}, {}
        for split, path in self.splits.items():
            final = os.path.join(self.out, OUTPUTS[split])
            rows[split], files[OUTPUTS[split]] = self.convert(split, path, final, lookups)
        stages["convert"] = time.time() - started - stages["lookups"]
        del lookups
        write_multihot_counts(os.path.join(self.out, OUTPUTS["counts"]), self.table_sizes, self.o.sizes)
        manifest = {
            "format": f"multi-hot binary: per sample {self.words} little-endian 4-byte words (int32 label, 13 "
                      f"float32 dense ({'ln(x + 3)' if self.o.semantics == 'dcnv2' else 'log(x + 1)'}), "
                      f"{sum(self.o.sizes)} int32 ids: each table's bag of multihot_sizes[t] in table order)",
            "options": asdict(self.o), "input": os.path.dirname(os.path.abspath(self.counts_path)),
            "table_sizes": self.table_sizes, "multihot_sizes": self.o.sizes, "splits": rows, "files": files,
            "lookup_bytes": lookup_bytes(self.table_sizes, self.o.sizes), "seconds": round(time.time() - started, 1),
            "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        }
        write_json(os.path.join(self.out, OUTPUTS["manifest"]), manifest)
        shutil.rmtree(self.work, ignore_errors=True)
        return manifest

    def convert(self, split: str, path: str, final: str, lookups: list) -> tuple[int, dict]:
        """One split to ``final``; returns its rows and its file's bytes and sha256."""
        source = np.memmap(path, dtype="<i4", mode="r", shape=(os.path.getsize(path) // RECORD_BYTES, COLUMNS))
        n = source.shape[0]
        record = 4 * self.words
        progress_file = os.path.join(self.work, f"{split}.progress.json")
        partial = final + ".partial"
        digest = hashlib.sha256()
        if os.path.isfile(final):
            with open(final, "rb") as f:
                for chunk in iter(lambda: f.read(16 << 20), b""):
                    digest.update(chunk)
            return n, {"bytes": os.path.getsize(final), "sha256": digest.hexdigest()}
        done = 0
        if os.path.isfile(progress_file) and os.path.isfile(partial):
            with open(progress_file) as f:
                done = json.load(f)["rows"]
        bar = tqdm(total=n, initial=done, unit="row", unit_scale=True, desc=f"2/2 {split}",
                   disable=not self.progress, file=sys.stderr)
        with open(partial, "r+b" if done else "w+b") as f, ThreadPoolExecutor(self.threads) as pool:
            f.truncate(done * record)  # what follows the last synced sample is redone
            f.seek(0)
            for chunk in iter(lambda: f.read(16 << 20), b""):
                digest.update(chunk)
            unsynced = 0
            for start in range(done, n, self.block_rows):
                stop = min(start + self.block_rows, n)
                out = self._block(np.asarray(source[start:stop]), path, start, lookups, pool)
                f.write(out.data)
                digest.update(out.data)
                unsynced += out.nbytes
                bar.update(stop - start)
                if unsynced >= SYNC_BYTES or stop == n:
                    f.flush()
                    os.fsync(f.fileno())
                    write_json(progress_file, {"rows": stop})
                    unsynced = 0
        bar.close()
        os.replace(partial, final)
        return n, {"bytes": os.path.getsize(final), "sha256": digest.hexdigest()}

    def _block(self, block: np.ndarray, path: str, first_row: int, lookups: list, pool: ThreadPoolExecutor):
        out = np.empty((block.shape[0], self.words), dtype="<i4")
        out[:, 0] = block[:, 0]
        dense = transform_dense(block[:, 1:1 + NUM_DENSE], self.o.semantics, path, first_row)
        out[:, 1:1 + NUM_DENSE] = dense.view("<i4")
        none = np.zeros((1, 0), dtype="<i4")

        def fill(lo: int, hi: int) -> None:
            for t in range(NUM_SPARSE):
                extra = lookups[t] if lookups[t] is not None else none
                bad = _fill_bags(block[lo:hi], t, self.table_sizes[t], extra, out[lo:hi], int(self.starts[t]))
                if bad >= 0:
                    raise PreprocessError(f"{path}: sample {first_row + lo + bad}, categorical column {t}: id "
                                          f"{block[lo + bad, 1 + NUM_DENSE + t]} is outside its table of "
                                          f"{self.table_sizes[t]} rows ({self.counts_path})")
        bounds = np.linspace(0, block.shape[0], self.threads + 1).astype(int)
        list(pool.map(fill, bounds[:-1], bounds[1:]))  # list(): raise what a thread raised
        return out
