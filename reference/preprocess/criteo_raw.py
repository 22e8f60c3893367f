"""The raw Criteo Click Logs text format: parsing (the writer of synthetic raw days is reference/synthetic.py).

A line is ``label \\t 13 integers \\t 26 hex categoricals \\n``; any field but
the label may be empty. Parsing follows the original reference's
preprocessing exactly (REFERENCE.md): empty -> 0, negative integers -> 0,
categorical = int(hex, 16) mod ``max_ind_range`` (no reduction when it is 0);
``keep_negative`` keeps negative integers instead (the dcnv2 semantics).

Two parsers share these rules. A block first goes through one compiled pass
over its bytes (numba; no Python loop per line or per field), which handles
well-formed text only and gives up at the first irregularity. Such a block is
parsed again by the vectorised numpy parser, which finds every malformed line:
an error naming the file, the line number and the field, or, with
``on_bad_line="skip"``, the line counted and dropped. The compiled pass is
about 18x faster than the numpy one on 8 MB blocks (benchmarks/RESULTS.md),
and a test holds the two to the same results on clean and corrupted text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..data.binary import COLUMNS, NUM_DENSE, NUM_SPARSE

MAX_DENSE_DIGITS = 18   # fits int64 before clamping to int32
MAX_HEX_DIGITS = 16     # fits uint64
INT32_MAX = 2 ** 31 - 1

_HEX = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DIGIT = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(b"0123456789"):
    _DIGIT[_c] = _i
# The same tables as int8 for the compiled pass, which freezes them as constants (a load each
# byte beats its chain of range tests 2.5x).
_DECIMAL, _HEXADECIMAL = _DIGIT.astype(np.int8), _HEX.astype(np.int8)


class RawFormatError(ValueError):
    """A line of a raw file is malformed; the message names file, line and field."""


@dataclass
class ParsedBlock:
    # (n, 40) int32 in the binary file's layout: label, 13 dense values (clamped at 0 unless kept),
    # then 26 columns left for the ids the vocabulary assigns (not set by the parser).
    records: np.ndarray
    categorical: np.ndarray  # (n, 26) int64, hashed mod max_ind_range
    lines: int              # lines read, skipped ones included
    skipped: int            # malformed lines dropped (on_bad_line="skip")

    @property
    def labels(self) -> np.ndarray:
        return self.records[:, 0]

    @property
    def dense(self) -> np.ndarray:
        return self.records[:, 1:1 + NUM_DENSE]

    def __len__(self) -> int:
        return self.records.shape[0]


def field_name(index: int) -> str:
    if index == 0:
        return "label"
    if index <= NUM_DENSE:
        return f"integer column I{index}"
    return f"categorical column C{index - NUM_DENSE}"


class _Problems:
    """Malformed lines of a block: which lines, and the first (line, field) in
    file order with its reason."""

    def __init__(self, n: int):
        self.bad = np.zeros(n, dtype=bool)
        self.first: tuple | None = None  # (line, field, reason)

    def add(self, lines: np.ndarray, fields: np.ndarray, describe) -> None:
        if lines.size == 0:
            return
        self.bad[lines] = True
        k = int(np.lexsort((fields, lines))[0])
        candidate = (int(lines[k]), int(fields[k]))
        if self.first is None or candidate < self.first[:2]:
            self.first = candidate + (describe(k),)

    def raise_first(self, path: str, first_line: int) -> None:
        assert self.first is not None, "raise_first() with no problem added"
        line, field, reason = self.first
        where = f"{path}:{first_line + line}"
        if field < 0:
            raise RawFormatError(f"{where}: {reason}")
        raise RawFormatError(f"{where}: {field_name(field)} (field {field + 1} of {COLUMNS}): {reason}")


def _digits(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_width: int, table: np.ndarray,
            base: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of the digit strings buf[starts:starts+lengths] in ``base``, all
    at once (Horner's rule, one pass per character position up to the longest
    string present), and a mask of strings with a character outside ``table``
    or longer than ``max_width``."""
    values = np.zeros(starts.shape, dtype=np.uint64)
    bad = lengths > max_width
    width = min(int(lengths.max(initial=0)), max_width)
    last = buf.size - 1
    for position in range(width):
        inside = lengths > position
        digit = table[buf[np.minimum(starts + position, last)]]
        bad |= inside & (digit < 0)
        shifted = values * np.uint64(base) + np.maximum(digit, 0).astype(np.uint64)
        np.copyto(values, shifted, where=inside)
    return values, bad


def parse_block(data, path: str = "<data>", first_line: int = 1, max_ind_range: int = 0,
                on_bad_line: str = "error", keep_negative: bool = False) -> ParsedBlock:
    """Parse whole lines (``data``, bytes or any buffer, ends with a newline,
    or holds the file's last line without one). ``first_line`` is the 1-based number of the
    block's first line in its file, for error messages. ``keep_negative``: negative
    integers are kept (the dcnv2 reference's ln(x + 3) takes them as they are)."""
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    if max_ind_range < 0:
        raise ValueError(f"max_ind_range must be >= 0, got {max_ind_range}")
    buf = np.frombuffer(data, dtype=np.uint8)
    n = _count_lines(buf)
    if buf.size and buf[-1] != 10:
        buf = np.append(buf, np.uint8(10))
        n += 1
    records = np.empty((n, COLUMNS), dtype=np.int32)
    categorical = np.empty((NUM_SPARSE, n), dtype=np.int64)  # one contiguous column each, for the vocabulary
    if _parse_clean(buf, max_ind_range, keep_negative, records, categorical) == n:
        return ParsedBlock(records, categorical.T, lines=n, skipped=0)
    return parse_checked(data, path, first_line, max_ind_range, on_bad_line, keep_negative)


@numba.njit(nogil=True, cache=True)
def _count_lines(buf):  # pragma: no cover (compiled)
    n = 0
    for byte in buf:
        n += byte == 10
    return n


@numba.njit(nogil=True, cache=True, inline="always")
def _digits_at(buf, i, table, base):  # pragma: no cover (compiled)
    """The value (uint64, wrapping when too long) of the digits from buf[i] in
    ``base``, by ``table`` (-1: not a digit), and where they end."""
    value = np.uint64(0)
    while True:
        digit = table[buf[i]]
        if digit < 0:
            return value, i
        value = value * np.uint64(base) + np.uint64(digit)
        i += 1


@numba.njit(nogil=True, cache=True)
def _parse_clean(buf, max_ind_range, keep_negative, records, categorical):  # pragma: no cover (compiled)
    """Fill ``records`` (label and dense columns) and ``categorical`` from
    well-formed lines; ``buf`` ends with a newline. Returns the number of
    lines, or fewer when it stopped at a line that breaks a rule (the caller
    then hands the block to :func:`parse_checked`, which says what is wrong).
    Digit loops stop at any other byte, the final newline included, and the
    separator is checked before moving on: the pass never reads past the end.
    Over-long numbers may wrap while read; their width rejects them after."""
    size = buf.size
    modulus = np.uint64(max_ind_range)
    n = 0
    i = 0
    while i < size:
        c = buf[i]
        if (c != 48 and c != 49) or buf[i + 1] != 9:
            return n
        records[n, 0] = c - 48
        i += 2
        for f in range(NUM_DENSE):
            negative = buf[i] == 45
            if negative:
                i += 1
            value, end = _digits_at(buf, i, _DECIMAL, 10)
            width, i = end - i, end
            if buf[i] != 9 or width > MAX_DENSE_DIGITS or (negative and width == 0):
                return n
            i += 1
            clamped = np.int64(value) if np.int64(value) < INT32_MAX else np.int64(INT32_MAX)
            records[n, 1 + f] = (-clamped if keep_negative else 0) if negative else clamped
        for f in range(NUM_SPARSE):
            value, end = _digits_at(buf, i, _HEXADECIMAL, 16)
            width, i = end - i, end
            if buf[i] != (10 if f == NUM_SPARSE - 1 else 9) or width > MAX_HEX_DIGITS:
                return n
            i += 1
            if max_ind_range > 0:
                value = value % modulus
            categorical[f, n] = np.int64(value)  # wraps like numpy's astype above 2**63 (16 hex digits)
        n += 1
    return n


def parse_checked(data, path: str = "<data>", first_line: int = 1, max_ind_range: int = 0,
                  on_bad_line: str = "error", keep_negative: bool = False) -> ParsedBlock:
    """The vectorised numpy parser: slower, but it finds every malformed line
    and names the first one's field (or drops them all with "skip")."""
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        return _empty(0, 0)
    if buf[-1] != 10:
        buf = np.append(buf, np.uint8(10))
    newlines = np.flatnonzero(buf == 10)
    n = newlines.size
    line_start = np.concatenate(([0], newlines[:-1] + 1))
    tabs = np.flatnonzero(buf == 9)
    # Tabs per line, by where each tab falls among the newlines.
    tab_line = np.searchsorted(newlines, tabs)
    tab_count = np.bincount(tab_line, minlength=n)
    problems = _Problems(n)

    crlf = np.flatnonzero((newlines > line_start) & (buf[np.maximum(newlines - 1, 0)] == 13))
    problems.add(crlf, np.full(crlf.size, -1), lambda k: "line ends with CRLF (\\r\\n); expected LF endings")
    wrong = np.flatnonzero(tab_count != COLUMNS - 1)
    problems.add(wrong, np.full(wrong.size, -1),
                 lambda k: f"{tab_count[wrong[k]] + 1} tab-separated fields, expected {COLUMNS}")
    if problems.first is not None and on_bad_line == "error":
        problems.raise_first(path, first_line)

    good = np.flatnonzero(~problems.bad)
    # Field boundaries of the well-formed lines: the line start, then after each tab.
    tab_pos = tabs[np.searchsorted(tabs, line_start[good])[:, None] + np.arange(COLUMNS - 1)]
    starts = np.concatenate([line_start[good, None], tab_pos + 1], axis=1)
    ends = np.concatenate([tab_pos, newlines[good, None]], axis=1)
    lengths = ends - starts

    def text(r: int, field: int) -> str:
        return bytes(buf[starts[r, field]:ends[r, field]]).decode(errors="replace")

    # Label: exactly "0" or "1".
    first_char = buf[starts[:, 0]]
    label_bad = np.flatnonzero((lengths[:, 0] != 1) | ((first_char != 48) & (first_char != 49)))
    problems.add(good[label_bad], np.zeros(label_bad.size, dtype=np.int64),
                 lambda k: f"must be 0 or 1, got {text(int(label_bad[k]), 0)!r}")

    # Integers: empty -> 0, optional leading '-', decimal digits; negative -> 0.
    d_start, d_len = starts[:, 1:1 + NUM_DENSE], lengths[:, 1:1 + NUM_DENSE]
    negative = (d_len > 0) & (buf[d_start] == 45)
    digit_len = d_len - negative
    values, nondigit = _digits(buf, d_start + negative, digit_len, MAX_DENSE_DIGITS, _DIGIT, 10)
    rows, cols = np.nonzero(nondigit | (negative & (digit_len == 0)))
    problems.add(good[rows], 1 + cols, lambda k: f"expected an integer, got {text(int(rows[k]), 1 + int(cols[k]))!r}")
    magnitude = np.minimum(values, INT32_MAX).astype(np.int64)
    dense = np.where(negative, -magnitude if keep_negative else 0, magnitude).astype(np.int32)

    # Categoricals: empty -> 0, else hexadecimal, reduced mod max_ind_range.
    c_start, c_len = starts[:, 1 + NUM_DENSE:], lengths[:, 1 + NUM_DENSE:]
    hashes, nonhex = _digits(buf, c_start, c_len, MAX_HEX_DIGITS, _HEX, 16)
    crows, ccols = np.nonzero(nonhex)
    problems.add(good[crows], 1 + NUM_DENSE + ccols,
                 lambda k: f"expected hexadecimal, got {text(int(crows[k]), 1 + NUM_DENSE + int(ccols[k]))!r}")
    if max_ind_range > 0:
        hashes = hashes % np.uint64(max_ind_range)

    if problems.first is not None and on_bad_line == "error":
        problems.raise_first(path, first_line)
    keep = ~problems.bad[good]
    records = np.zeros((int(keep.sum()), COLUMNS), dtype=np.int32)
    records[:, 0] = first_char[keep] == 49
    records[:, 1:1 + NUM_DENSE] = dense[keep]
    return ParsedBlock(records, hashes[keep].astype(np.int64), lines=n, skipped=int(problems.bad.sum()))


def _empty(lines: int, skipped: int) -> ParsedBlock:
    return ParsedBlock(np.zeros((0, COLUMNS), np.int32), np.zeros((0, NUM_SPARSE), np.int64), lines, skipped)
