"""The input days: finding them (terabyte day files, or Kaggle's train.txt cut
into days), reading each in blocks of whole lines, and parsing the next days
in threads while the caller maps the current one."""

from __future__ import annotations

import gzip
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from .criteo_raw import RawFormatError, parse_block
from .options import Options, PreprocessError

# Input read and parsed at a time: small enough that a block's arrays stay under glibc's mmap
# threshold, so freed ones are reused instead of faulted in again (reference/malloc.py).
BLOCK_BYTES = 8 << 20
RAW_BYTES_PER_ROW = 200         # conservative: Criteo lines average ~280 bytes of text
GZIP_RATIO = 4                  # text bytes per gzip byte, for estimates only


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


def parse_day(source: DaySource, max_ind_range: int, on_bad_line: str, keep_negative: bool = False):
    """Yield (parsed block, input bytes consumed so far) for one day, in order."""
    line = source.first_line
    try:
        for block, position in read_blocks(source):
            parsed = parse_block(block, source.path, line, max_ind_range, on_bad_line, keep_negative)
            line += parsed.lines
            yield parsed, position
    except _UnreadableInput as e:
        raise RawFormatError(f"{source.path}:{line}: cannot read past this line: {e.args[0]} "
                             f"(truncated or corrupt gzip?)") from None
    if line == source.first_line and on_bad_line == "error":
        raise RawFormatError(f"{source.path}: the file is empty")


def _parse_worker(source: DaySource, max_ind_range: int, on_bad_line: str, keep_negative: bool,
                  out: queue.Queue) -> None:
    try:
        for item in parse_day(source, max_ind_range, on_bad_line, keep_negative):
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
                                      args=(self.sources[day], self.o.max_ind_range, self.o.on_bad_line,
                                            self.o.semantics == "dcnv2", out))
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
