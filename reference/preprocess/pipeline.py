"""The stages of preprocessing (map, shuffle, split, finish), each resumable;
see the package's documentation (reference/preprocess/__init__.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from ..data.binary import COLUMNS, NUM_DENSE, NUM_SPARSE, RECORD_BYTES, write_counts
from ..jsonfile import write_json
from ..malloc import release_freed_memory
from .days import DaySource, ParseAhead, estimated_rows, parse_day
from .options import DCNV2_FIRST_ID, Options, PreprocessError, defaults_of_later_fields, output_names
from .vocabulary import Vocabulary

BUCKET_BYTES = 512 << 20        # target size of one shuffle bucket (memory of stage 2)
# While a bucket is rewritten into the training file its files still exist: with at least
# 4 buckets that extra copy is at most a quarter of the training data (disk <= 1.25x outputs).
MIN_BUCKETS = 4


class _DayWriter:
    """Writes a day's mapped records from a thread of its own, block by block
    in order: a training day's rows scattered into ``buckets`` files by a
    seeded draw per row, the last day's rows to rows.bin (``buckets`` = 0).
    The draw happens here, in block order, so the files do not depend on
    timing; the mapping thread only hands blocks over (a bounded queue)."""

    def __init__(self, folder: str, buckets: int, rng: np.random.Generator):
        self.buckets, self.rng = buckets, rng
        names = [f"bucket_{k}.bin" for k in range(buckets)] if buckets else ["rows.bin"]
        self.files = [open(os.path.join(folder, name), "wb") for name in names]
        self.counts = np.zeros(buckets, dtype=np.int64)
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, records: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(records)

    def close(self) -> np.ndarray:
        """Wait for the writes; the rows per bucket (none for rows.bin)."""
        self.queue.put(None)
        self.thread.join()
        for f in self.files:
            f.close()
        if self.error is not None:
            raise self.error
        return self.counts

    def _run(self) -> None:
        try:
            while (records := self.queue.get()) is not None:
                self._write(records)
        except BaseException as e:  # raised in the mapping thread at its next put or at close
            self.error = e
            while self.queue.get() is not None:  # keep taking blocks so the producer never blocks
                pass

    def _write(self, records: np.ndarray) -> None:
        if not self.buckets:
            self.files[0].write(records.data)
            return
        which = self.rng.integers(0, self.buckets, size=len(records))
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(self.buckets + 1))
        grouped = records[order]
        for k in range(self.buckets):
            self.files[k].write(grouped[bounds[k]:bounds[k + 1]].data)
        self.counts += np.diff(bounds)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = data.reshape(-1).view(np.uint8).data
    while view:  # one pwrite moves at most ~2 GB on Linux
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _hash_range(digest, path: str, start: int, length: int) -> None:
    with open(path, "rb") as f:
        f.seek(start)
        while length:
            chunk = f.read(min(length, 16 << 20))
            if not chunk:
                raise PreprocessError(f"{path}: ends before byte {start + length}; remove it and rerun")
            digest.update(chunk)
            length -= len(chunk)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(16 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Pipeline:
    def __init__(self, options: Options, inputs: list[DaySource], out: str, progress: bool = True,
                 workers: int = 0):
        self.o = options
        self.workers = workers
        self.threads = max(1, workers)  # dictionary columns mapped at once; parts of a shuffle bucket
        self.inputs = inputs
        self.out = out
        self.work = os.path.join(out, "work")
        self.names = output_names(options.dataset)
        self.progress = progress
        self.vocab = Vocabulary(NUM_SPARSE, options.max_ind_range, threads=self.threads)
        self.checksums: dict[str, str] = {}  # sha256 of outputs taken while writing them

    # --- checks before any work ------------------------------------------
    def check_before_start(self) -> None:
        manifest = os.path.join(self.out, self.names["manifest"])
        if os.path.isfile(manifest):
            with open(manifest) as f:
                done = json.load(f)
            if {**defaults_of_later_fields(), **done.get("options", {})} == asdict(self.o):
                return
            raise PreprocessError(f"{self.out}: holds a dataset made with other options "
                                  f"({done.get('options')}); choose another --out")
        others = [n for n in os.listdir(self.out) if n.endswith((".bin", "_fea_count.npz"))
                  and n not in self.names.values()] if os.path.isdir(self.out) else []
        if others:
            raise PreprocessError(f"{self.out}: holds another dataset's files ({', '.join(sorted(others))}); "
                                  f"choose another --out")
        options_file = os.path.join(self.work, "options.json")
        if os.path.isfile(options_file):
            with open(options_file) as f:
                if {**defaults_of_later_fields(), **json.load(f)} != asdict(self.o):
                    raise PreprocessError(f"{self.work}: an interrupted run with other options is there; "
                                          f"rerun with its options or remove {self.work}")
        need = 2 * estimated_rows(self.inputs) * RECORD_BYTES
        os.makedirs(self.out, exist_ok=True)
        free = shutil.disk_usage(self.out).free
        if need > free:
            raise PreprocessError(f"{self.out}: about {need / 1e9:.1f} GB needed (outputs plus temporary buckets), "
                                  f"{free / 1e9:.1f} GB free")

    # --- stage 1 ----------------------------------------------------------
    def map_days(self) -> list[dict]:
        records = []
        last = self.o.days - 1
        total_bytes = sum(source.size() for source in self.inputs)
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="1/3 map", disable=not self.progress,
                   file=sys.stderr)
        start = 0  # the first day to map: every day before it is complete and its input unchanged
        while start < len(self.inputs):
            record_file = os.path.join(self.work, f"day_{start}", "record.json")
            if not os.path.isfile(record_file):
                break
            with open(record_file) as f:
                record = json.load(f)
            if record.get("source") != self.inputs[start].signature():
                break  # the input changed since the interrupted run
            with np.load(os.path.join(self.work, f"day_{start}", "vocabulary.npz")) as v:
                self.vocab.extend([v[f"c{c}"] for c in range(NUM_SPARSE)])
            records.append(record)
            bar.update(self.inputs[start].size())
            start += 1
        if start < len(self.inputs):
            self._discard_shuffle_progress()
        todo = {day: self.inputs[day] for day in range(start, len(self.inputs))}
        parser = ParseAhead(todo, self.o, self.workers) if self.workers and todo else None
        for day, source in todo.items():  # ids depend on earlier days: map in order
            folder = os.path.join(self.work, f"day_{day}")
            shutil.rmtree(folder, ignore_errors=True)
            partial = folder + ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            blocks = parser.blocks(day) if parser else parse_day(source, self.o.max_ind_range, self.o.on_bad_line,
                                                                 self.o.semantics == "dcnv2")
            records.append(self._map_day(day, source, partial, is_train=day < last, bar=bar, blocks=blocks))
            os.replace(partial, folder)
        bar.close()
        return records

    def _discard_shuffle_progress(self) -> None:
        """Shuffle progress and outputs built on days about to be (re)mapped are void."""
        for name in os.listdir(self.work):
            if name.startswith("bucket_") and name.endswith(".done"):
                os.remove(os.path.join(self.work, name))
        for name in (self.names["train"], self.names["test"], self.names["val"]):
            for path in (os.path.join(self.out, name), os.path.join(self.out, name) + ".partial"):
                if os.path.exists(path):
                    os.remove(path)

    def _map_day(self, day: int, source: DaySource, folder: str, is_train: bool, bar, blocks) -> dict:
        keep_rng = np.random.default_rng([self.o.seed, day, 0])
        writer = _DayWriter(folder, self.o.buckets if is_train else 0, np.random.default_rng([self.o.seed, day, 1]))
        lines = skipped = kept = 0
        seen = 0
        started = time.time()
        busy = 0.0  # this thread's in-order work, without the waits for parsed blocks
        try:
            for parsed, position in blocks:
                work_started = time.perf_counter()
                lines += parsed.lines
                skipped += parsed.skipped
                records, categorical = parsed.records, parsed.categorical
                if is_train and self.o.sub_sample_rate > 0:
                    keep = (parsed.labels == 1) | (keep_rng.random(len(parsed)) >= self.o.sub_sample_rate)
                    records, categorical = records[keep], categorical[keep]
                ids = self.vocab.map(categorical, out=records[:, 1 + NUM_DENSE:])
                if self.o.table_sizes is not None:  # dcnv2: numbered from 2, then mod its table sizes
                    ids += DCNV2_FIRST_ID
                    ids %= np.asarray(self.o.table_sizes, dtype=np.int32)
                kept += records.shape[0]
                writer.put(records)
                bar.update(position - seen)
                seen = position
                bar.set_postfix(day=day, rows_per_s=f"{kept / max(time.time() - started, 1e-9):,.0f}")
                busy += time.perf_counter() - work_started
        finally:
            counts = writer.close()
        additions = self.vocab.take_additions()
        if 0 < self.o.max_ind_range <= 2 ** 31:  # values below max_ind_range: half the disk as int32
            additions = [a.astype(np.int32) for a in additions]
        # numpy's stub types **kwds as if one could be allow_pickle (a bool): they are the arrays to save.
        np.savez(os.path.join(folder, "vocabulary.npz"),
                 **{f"c{c}": a for c, a in enumerate(additions)})  # type: ignore[arg-type]
        record = {"day": day, "path": source.label, "source": source.signature(), "lines": lines,
                  "skipped": skipped, "kept": kept, "train": is_train, "buckets": counts.tolist(),
                  "in_order_seconds": round(busy, 3)}
        write_json(os.path.join(folder, "record.json"), record)
        return record

    # --- stage 2 ----------------------------------------------------------
    def shuffle_train(self, records: list[dict]) -> int:
        train_days = [r for r in records if r["train"]]
        sizes = np.sum([r["buckets"] for r in train_days], axis=0) if train_days else np.zeros(self.o.buckets, int)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        final = os.path.join(self.out, self.names["train"])
        total = int(offsets[-1])
        if os.path.isfile(final):
            return total
        partial = final + ".partial"
        if not os.path.isfile(partial):
            with open(partial, "wb") as f:
                f.truncate(total * RECORD_BYTES)
        bar = tqdm(total=self.o.buckets, desc="2/3 shuffle", unit="bucket", disable=not self.progress,
                   file=sys.stderr)
        largest = int(sizes.max(initial=0))  # two buffers of the largest bucket, reused
        buffers = (np.empty((largest, COLUMNS), dtype="<i4"), np.empty((largest, COLUMNS), dtype="<i4"))
        # Buckets are written in file order, so the file's checksum is taken on the way
        # (saves reading it again); buckets done before a resume are read back for it.
        digest = hashlib.sha256()
        with ThreadPoolExecutor(self.threads) as pool:
            for k in range(self.o.buckets):
                done = os.path.join(self.work, f"bucket_{k}.done")
                if not os.path.isfile(done):
                    self._shuffle_bucket(k, train_days, int(offsets[k]), partial, buffers, pool, digest)
                    open(done, "w").close()  # only after the rows are on disk at their offset
                else:
                    _hash_range(digest, partial, int(offsets[k]) * RECORD_BYTES, int(sizes[k]) * RECORD_BYTES)
                for r in train_days:  # this bucket is in the training file now: free its disk
                    part = os.path.join(self.work, f"day_{r['day']}", f"bucket_{k}.bin")
                    if os.path.exists(part):
                        os.remove(part)
                bar.update(1)
        bar.close()
        os.replace(partial, final)
        self.checksums[final] = digest.hexdigest()
        return total

    def _shuffle_bucket(self, k: int, train_days: list[dict], offset: int, partial: str, buffers: tuple,
                        pool: ThreadPoolExecutor, digest) -> None:
        """Bucket k of every training day, shuffled with its own seed, written at
        its offset (rewriting it whole, so a half-written bucket heals on resume).
        The gather and the write are split in contiguous parts, one per thread;
        then the flush to disk and the checksum of the rows run side by side."""
        parts = [(os.path.join(self.work, f"day_{r['day']}", f"bucket_{k}.bin"), r["buckets"][k]) for r in train_days]
        n = sum(count for _, count in parts)
        rows, shuffled = buffers[0][:n], buffers[1][:n]
        at = 0
        for path, count in parts:
            with open(path, "rb") as f:
                got = f.readinto(rows[at:at + count])
            if got != count * RECORD_BYTES:
                raise PreprocessError(f"{path}: {got} bytes, expected {count * RECORD_BYTES} (the work folder was "
                                      f"changed); remove {self.work} and rerun")
            at += count
        order = np.random.default_rng([self.o.seed, 10_000 + k]).permutation(n)
        fd = os.open(partial, os.O_WRONLY)
        try:
            def gather_and_write(lo: int, hi: int) -> None:
                np.take(rows, order[lo:hi], axis=0, out=shuffled[lo:hi], mode="clip")  # "raise" would copy first
                _pwrite_all(fd, shuffled[lo:hi], (offset + lo) * RECORD_BYTES)
            bounds = np.linspace(0, n, self.threads + 1).astype(int)
            list(pool.map(gather_and_write, bounds[:-1], bounds[1:]))  # list(): raise what a thread raised
            flushed = pool.submit(os.fsync, fd)
            digest.update(shuffled)  # hashlib lets go of the GIL for large buffers
            flushed.result()
        finally:
            os.close(fd)

    # --- stage 3 ----------------------------------------------------------
    def split_last_day(self, records: list[dict]) -> tuple[int, int]:
        last = records[-1]
        n = last["kept"]
        n_test = math.ceil(n / 2)
        source = os.path.join(self.work, f"day_{last['day']}", "rows.bin")
        for name, start, count in (("test", 0, n_test), ("val", n_test, n - n_test)):
            final = os.path.join(self.out, self.names[name])
            if os.path.isfile(final):
                continue
            with open(source, "rb") as src, open(final + ".partial", "wb") as dst:
                src.seek(start * RECORD_BYTES)
                left = count * RECORD_BYTES
                while left:
                    chunk = src.read(min(left, 64 << 20))
                    dst.write(chunk)
                    left -= len(chunk)
            os.replace(final + ".partial", final)
        return n_test, n - n_test

    # --- all --------------------------------------------------------------
    def run(self) -> dict:
        self.check_before_start()
        manifest_path = os.path.join(self.out, self.names["manifest"])
        if os.path.isfile(manifest_path):
            with open(manifest_path) as f:
                return json.load(f)
        os.makedirs(self.work, exist_ok=True)
        write_json(os.path.join(self.work, "options.json"), asdict(self.o))
        started = time.time()
        stages = {}
        records = self.map_days()
        stages["map"] = time.time() - started
        table_sizes = list(self.o.table_sizes) if self.o.table_sizes is not None else self.vocab.sizes
        del self.vocab  # up to 4.2 GB of dictionaries: freed before the shuffle's buffers
        release_freed_memory()
        train = self.shuffle_train(records)
        stages["shuffle"] = time.time() - started - sum(stages.values())
        test, val = self.split_last_day(records)
        counts_path = os.path.join(self.out, self.names["counts"])
        write_counts(counts_path, table_sizes)
        stages["split"] = time.time() - started - sum(stages.values())
        files = {}
        for key in ("train", "test", "val", "counts"):
            path = os.path.join(self.out, self.names[key])
            checksum = self.checksums.get(path) or _sha256(path)
            files[self.names[key]] = {"bytes": os.path.getsize(path), "sha256": checksum}
        stages["checksums"] = time.time() - started - sum(stages.values())
        manifest = {
            "format": "MLPerf DLRM binary: 40 little-endian int32 per sample (label, 13 dense, 26 ids)",
            "options": asdict(self.o), "splits": {"train": train, "test": test, "val": val},
            "table_sizes": table_sizes,
            "inputs": [{k: r[k] for k in ("path", "lines", "skipped", "kept")} for r in records],
            "files": files, "seconds": round(time.time() - started, 1),
            "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
            # the serial part of the map stage (ids in day order): what more cores cannot shorten
            "map_in_order_seconds": round(sum(r.get("in_order_seconds", 0) for r in records), 1),
        }
        write_json(manifest_path, manifest)
        shutil.rmtree(self.work, ignore_errors=True)
        return manifest


def default_buckets(inputs: list[DaySource]) -> int:
    return max(MIN_BUCKETS, math.ceil(estimated_rows(inputs) * RECORD_BYTES / BUCKET_BYTES))
