"""Raw Criteo day files -> MLPerf binary files (train, test, val), counts and a manifest.

    python -m reference.preprocess --dataset {terabyte,kaggle} --raw PATH --out DIR
        [--max-ind-range 40000000] [--sub-sample-rate R] [--days N] [--seed S]
        [--on-bad-line {error,skip}] [--buckets K] [--workers N]

Semantics of the original reference (REFERENCE.md): empty -> 0, negative
integers -> 0, categorical = hex mod max-ind-range, one dictionary per column
over all days numbered by first appearance (rows dropped by sub-sampling not
counted), days 0..N-2 train (negatives sub-sampled with the seed), the last
day split into test (first ceil(n/2) rows) and val.

Stages, each resumable (temporary names, renamed when complete; a rerun after
kill -9 skips what is complete and writes byte-identical outputs):
  1. map:     each day in order is streamed, parsed, sub-sampled and mapped to
              ids; training rows are scattered into K buckets by a seeded draw;
              the day's new dictionary entries are saved for resume;
  2. shuffle: each bucket is shuffled in memory (seeded) and written at its
              offset in the training file, so no split is ever held whole;
  3. split:   the last day becomes the test and val files;
  4. finish:  counts file and manifest (rows, table sizes, options, sha256).
Threads (``--workers``, default: cores) do what does not depend on order:
parsing the next days, the dictionary columns of a block, the gather and
write of a shuffle bucket; a writer thread scatters each day's rows into the
buckets in block order. The outputs do not depend on the number of threads.
Memory: the dictionaries (hash tables sized to the values seen, at most
26 x max-ind-range x 4 B: 4.2 GB at 40M; freed before the shuffle), a few
8 MB blocks per thread, then two buckets (at most about 512 MB each).
Temporary disk: at most a quarter of the training output besides the outputs.
"""

from __future__ import annotations

import argparse
import gzip
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
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from .data.binary import COLUMNS, RECORD_BYTES, write_counts
from .data.criteo_raw import NUM_DENSE, NUM_SPARSE, RawFormatError, parse_block
from .data.vocabulary import Vocabulary
from .jsonfile import write_json
from .malloc import keep_freed_memory, release_freed_memory

# Input read and parsed at a time: small enough that a block's arrays stay under glibc's mmap
# threshold, so freed ones are reused instead of faulted in again (reference/malloc.py).
BLOCK_BYTES = 8 << 20
BUCKET_BYTES = 512 << 20        # target size of one shuffle bucket (memory of stage 2)
# While a bucket is rewritten into the training file its files still exist: with at least
# 4 buckets that extra copy is at most a quarter of the training data (disk <= 1.25x outputs).
MIN_BUCKETS = 4
RAW_BYTES_PER_ROW = 200         # conservative: Criteo lines average ~280 bytes of text
GZIP_RATIO = 4                  # text bytes per gzip byte, for estimates only
PREFIX = {"terabyte": ("terabyte_processed", "day_fea_count.npz"),
          "kaggle": ("kaggle_processed", "kaggle_fea_count.npz")}


class PreprocessError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    dataset: str
    max_ind_range: int
    sub_sample_rate: float
    days: int
    seed: int
    on_bad_line: str
    buckets: int


def output_names(dataset: str) -> dict:
    prefix, counts = PREFIX[dataset]
    return {"train": f"{prefix}_train.bin", "test": f"{prefix}_test.bin", "val": f"{prefix}_val.bin",
            "counts": counts, "manifest": "manifest.json"}


@dataclass(frozen=True)
class DaySource:
    """One day of input: a whole day file, or (Kaggle) a byte range of train.txt."""
    path: str
    start: int = 0
    end: int | None = None   # None: to the end of the file
    first_line: int = 1

    @property
    def label(self) -> str:
        return self.path if self.end is None else f"{self.path} lines {self.first_line}.."

    def size(self) -> int:
        return (os.path.getsize(self.path) if self.end is None else self.end) - self.start

    def signature(self) -> list:
        """What a resumed run compares to trust a completed day: the input unchanged."""
        st = os.stat(self.path)
        return [self.path, self.start, self.end, st.st_size, st.st_mtime_ns]


def kaggle_days(path: str, days: int) -> list[DaySource]:
    """The seed's split of train.txt into ``days`` days: equal line counts, the
    first (lines mod days) days one line longer. Two passes: count, then find
    the byte offset where each day starts."""
    if not os.path.isfile(path):
        raise PreprocessError(f"{path}: Kaggle train.txt not found")
    if path.endswith(".gz"):
        raise PreprocessError(f"{path}: decompress it first (days are byte ranges of the plain file)")
    with open(path, "rb") as f:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(BLOCK_BYTES), b""))
        if os.path.getsize(path) and not _ends_with_newline(f):
            total += 1
    if total < days:
        raise PreprocessError(f"{path}: {total} lines cannot make {days} days")
    per_day, extras = divmod(total, days)
    firsts = np.cumsum([1] + [per_day + (1 if d < extras else 0) for d in range(days)])[:-1]
    offsets, line, position = [0], 1, 0
    with open(path, "rb") as f:
        targets = list(firsts[1:])
        while targets:
            chunk = f.read(BLOCK_BYTES)
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            while targets and line + ends.size >= targets[0]:  # the day starts after newline no. target-line
                offsets.append(position + int(ends[targets[0] - line - 1]) + 1)
                targets.pop(0)
            line += ends.size
            position += len(chunk)
    day_ends: list[int | None] = [*offsets[1:], None]
    return [DaySource(path, offsets[d], day_ends[d], int(firsts[d])) for d in range(days)]


def _ends_with_newline(f) -> bool:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def find_inputs(dataset: str, raw: str, days: int) -> list[DaySource]:
    """The days: terabyte RAW/day_0 .. day_{N-1} (plain or .gz); kaggle train.txt split in days."""
    if dataset == "kaggle":
        return kaggle_days(raw, days)
    if not os.path.isdir(raw):
        raise PreprocessError(f"{raw}: not a folder of day files (day_0 ... day_{days - 1}, plain or .gz)")
    found, missing = [], []
    for d in range(days):
        plain, packed = os.path.join(raw, f"day_{d}"), os.path.join(raw, f"day_{d}.gz")
        if os.path.isfile(plain) and os.path.isfile(packed):
            raise PreprocessError(f"{raw}: both day_{d} and day_{d}.gz exist; keep one")
        if os.path.isfile(plain) or os.path.isfile(packed):
            found.append(DaySource(plain if os.path.isfile(plain) else packed))
        else:
            missing.append(f"day_{d}")
    if missing:
        raise PreprocessError(f"{raw}: missing {', '.join(missing)} (expected day_0 ... day_{days - 1}, "
                              f"plain or .gz; --days sets how many)")
    return found


def estimated_rows(sources: list[DaySource]) -> int:
    return sum(s.size() * (GZIP_RATIO if s.path.endswith(".gz") else 1) // RAW_BYTES_PER_ROW for s in sources)


class _UnreadableInput(Exception):
    pass


def read_blocks(source: DaySource):
    """Yield (whole lines of the day, input bytes consumed so far). The lines
    are a view of one buffer that the next read overwrites: use each block
    before asking for the next. The day's last line may lack its newline."""
    path = source.path
    left = None if source.end is None else source.end - source.start
    buffer = bytearray(BLOCK_BYTES)
    filled = 0  # bytes at the front of the buffer: the carried-over start of a line
    try:
        # The progress is raw_handle's position: bytes of the input file, compressed or not.
        with open(path, "rb") as raw_handle, \
                (gzip.GzipFile(fileobj=raw_handle) if path.endswith(".gz") else raw_handle) as f:
            f.seek(source.start)
            while left is None or left > 0:
                if filled == len(buffer):  # one line longer than the buffer: a bigger one (the caller
                    bigger = bytearray(2 * len(buffer))  # may still hold a view, so no resizing)
                    bigger[:filled] = buffer
                    buffer = bigger
                room = len(buffer) - filled if left is None else min(len(buffer) - filled, left)
                got = f.readinto(memoryview(buffer)[filled:filled + room])
                if not got:
                    break
                if left is not None:
                    left -= got
                filled += got
                cut = buffer.rfind(b"\n", 0, filled) + 1
                if cut:
                    yield memoryview(buffer)[:cut], raw_handle.tell() - source.start
                    buffer[:filled - cut] = buffer[cut:filled]
                    filled -= cut
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise _UnreadableInput(e) from None
    if filled:
        yield memoryview(buffer)[:filled], source.size()


def parse_day(source: DaySource, max_ind_range: int, on_bad_line: str):
    """Yield (parsed block, input bytes consumed so far) for one day, in order."""
    line = source.first_line
    try:
        for block, position in read_blocks(source):
            parsed = parse_block(block, source.path, line, max_ind_range, on_bad_line)
            line += parsed.lines
            yield parsed, position
    except _UnreadableInput as e:
        raise RawFormatError(f"{source.path}:{line}: cannot read past this line: {e.args[0]} "
                             f"(truncated or corrupt gzip?)") from None
    if line == source.first_line and on_bad_line == "error":
        raise RawFormatError(f"{source.path}: the file is empty")


def _parse_worker(source: DaySource, max_ind_range: int, on_bad_line: str, out: queue.Queue) -> None:
    try:
        for item in parse_day(source, max_ind_range, on_bad_line):
            out.put(("block", item))
        out.put(("end", None))
    except Exception as e:  # handed to the consumer, which raises it in order
        out.put(("error", e))


class ParseAhead:
    """Parses the next ``workers`` days in threads while the caller maps the
    current one (the compiled parser and file reads let go of the GIL, and
    threads die with the process: a killed run leaves nothing behind). Everything
    order-dependent (sub-sampling draws, id assignment, bucket scatter) stays in
    the caller, so the outputs do not depend on the number of workers. Queues
    are bounded: memory stays at a few blocks per worker."""

    def __init__(self, sources: dict, options: Options, workers: int):
        self.sources, self.o, self.workers = sources, options, workers
        self.pending = sorted(sources)
        self.running: dict = {}
        self._start_more()

    def _start_more(self) -> None:
        while self.pending and len(self.running) < self.workers:
            day = self.pending.pop(0)
            out: queue.Queue = queue.Queue(maxsize=2)
            thread = threading.Thread(target=_parse_worker, daemon=True,
                                      args=(self.sources[day], self.o.max_ind_range, self.o.on_bad_line, out))
            thread.start()
            self.running[day] = out

    def blocks(self, day: int):
        out = self.running[day]
        try:
            while True:
                kind, item = out.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise item
                yield item
        finally:
            del self.running[day]
            self._start_more()


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
            if done.get("options") == asdict(self.o):
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
                if json.load(f) != asdict(self.o):
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
            blocks = parser.blocks(day) if parser else parse_day(source, self.o.max_ind_range, self.o.on_bad_line)
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
                self.vocab.map(categorical, out=records[:, 1 + NUM_DENSE:])
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
        table_sizes = self.vocab.sizes
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(PREFIX), required=True)
    p.add_argument("--raw", required=True, help="folder of day files (terabyte) or train.txt (kaggle)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-ind-range", type=int, default=None,
                   help="hash categoricals mod this (default: 40000000 for terabyte, 0 = none for kaggle)")
    p.add_argument("--sub-sample-rate", type=float, default=0.0, help="share of negative training rows dropped")
    p.add_argument("--days", type=int, default=None, help="number of days (default: 24 terabyte, 7 kaggle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad-line", choices=["error", "skip"], default="error")
    p.add_argument("--buckets", type=int, default=None, help="shuffle buckets (default: ~512 MB each, at least 4)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads: days parsed ahead of the in-order id assignment, and parts of each shuffle "
                        "bucket (0: parse inline, one thread; default: cores); the outputs do not depend on it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    kaggle = args.dataset == "kaggle"
    days = args.days if args.days is not None else (7 if kaggle else 24)
    max_ind_range = args.max_ind_range if args.max_ind_range is not None else (0 if kaggle else 40_000_000)
    if days < 2:
        p.error("--days must be at least 2 (training days, then the test/val day)")
    if not 0 <= args.sub_sample_rate < 1:
        p.error("--sub-sample-rate must be in [0, 1)")
    if max_ind_range < 0:
        p.error("--max-ind-range must be >= 0")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    keep_freed_memory()  # blocks reuse their pages instead of faulting them in again (reference/malloc.py)
    try:
        inputs = find_inputs(args.dataset, args.raw, days)
        buckets = args.buckets if args.buckets is not None else default_buckets(inputs[:-1])
        if buckets < 1:
            p.error("--buckets must be >= 1")
        options = Options(args.dataset, max_ind_range, args.sub_sample_rate, days, args.seed, args.on_bad_line,
                          buckets)
        manifest = Pipeline(options, inputs, args.out, progress=not args.no_progress, workers=args.workers).run()
    except (PreprocessError, RawFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, say: what is complete is kept
        print(f"error: {e}\nrerun the same command to resume once this is fixed", file=sys.stderr)
        return 2
    splits = manifest["splits"]
    skipped = sum(i["skipped"] for i in manifest["inputs"])
    print(f"done: train {splits['train']:,} / test {splits['test']:,} / val {splits['val']:,} rows; "
          f"{skipped:,} bad lines skipped; {sum(manifest['table_sizes']):,} embedding rows in "
          f"{len(manifest['table_sizes'])} tables; {manifest['seconds']} s; "
          f"manifest {os.path.join(args.out, 'manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
