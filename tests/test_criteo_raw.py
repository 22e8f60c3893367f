"""Raw Criteo lines, parsed with the original reference's rules; expected values written out by hand."""
import numpy as np
import pytest

from reference.data.binary import COLUMNS
from reference.preprocess.criteo_raw import RawFormatError, field_name, parse_block, parse_checked

EMPTY_CATS = [""] * 26


def line(label="0", ints=None, cats=None, end="\n"):
    ints = ints if ints is not None else [""] * 13
    cats = cats if cats is not None else EMPTY_CATS
    return "\t".join([label] + list(ints) + list(cats)) + end


def test_handwritten_lines_give_the_expected_rows():
    text = (
        line("1", ["1", "", "-1", "0", "2147483647", "99999999999", "7", "", "", "", "", "", "3"],
             ["68fd1e64", "", "00000001", "ffffffff", "ABCDEF01"] + [""] * 21)
        + line("0")                                         # every field empty
        + line("0", ["-2"] + [""] * 12, ["0"] * 26)          # negative integer, literal zero ids
    )
    b = parse_block(text.encode(), max_ind_range=0)
    assert b.labels.tolist() == [1, 0, 0]
    # empty -> 0, negative -> 0, values beyond int32 saturate (the seed stored int32).
    assert b.dense[0].tolist() == [1, 0, 0, 0, 2147483647, 2147483647, 7, 0, 0, 0, 0, 0, 3]
    assert b.dense[1].tolist() == [0] * 13 and b.dense[2].tolist() == [0] * 13
    assert b.categorical[0, :5].tolist() == [0x68FD1E64, 0, 1, 0xFFFFFFFF, 0xABCDEF01]
    assert b.categorical[1].tolist() == [0] * 26 and b.categorical[2].tolist() == [0] * 26
    assert (len(b), b.lines, b.skipped) == (3, 3, 0)


def test_categoricals_are_reduced_mod_max_ind_range():
    b = parse_block(line("1", cats=["68fd1e64", "ffffffff", "10"] + [""] * 23).encode(), max_ind_range=40_000_000)
    assert b.categorical[0, :3].tolist() == [0x68FD1E64 % 40_000_000, 0xFFFFFFFF % 40_000_000, 16]


def test_last_line_without_newline_and_empty_block():
    b = parse_block((line("1") + line("0", end="")).encode())
    assert b.labels.tolist() == [1, 0]
    assert len(parse_block(b"")) == 0


@pytest.mark.parametrize("bad, message", [
    (line("2"), "label (field 1 of 40): must be 0 or 1, got '2'"),
    (line(""), "label (field 1 of 40): must be 0 or 1, got ''"),
    (line("0", ["1", "2", "x3"] + [""] * 10), "integer column I3 (field 4 of 40): expected an integer, got 'x3'"),
    (line("0", ["1.5"] + [""] * 12), "integer column I1 (field 2 of 40): expected an integer, got '1.5'"),
    (line("0", ["-"] + [""] * 12), "integer column I1 (field 2 of 40): expected an integer, got '-'"),
    (line("0", cats=["68fd1e6g"] + [""] * 25), "categorical column C1 (field 15 of 40): expected hexadecimal, "
                                              "got '68fd1e6g'"),
    (line("0", cats=[""] * 25 + ["-1"]), "categorical column C26 (field 40 of 40): expected hexadecimal, got '-1'"),
    (line("0", end="\r\n"), "line ends with CRLF"),
    ("1\t2\t3\n", "3 tab-separated fields, expected 40"),
    (line("0")[:-1] + "\textra\n", "41 tab-separated fields, expected 40"),
])
def test_bad_lines_name_file_line_and_field(bad, message):
    text = line("1") * 4 + bad + line("0")
    with pytest.raises(RawFormatError) as e:
        parse_block(text.encode(), path="day_7.gz", first_line=101)
    assert str(e.value).startswith("day_7.gz:105: ")  # the fifth line of a block starting at line 101
    assert message in str(e.value)


def test_first_bad_line_in_file_order_is_reported():
    text = line("1") + line("0", ["z"] + [""] * 12) + line("5")
    with pytest.raises(RawFormatError, match=r"^f:2: integer column I1"):
        parse_block(text.encode(), path="f")


def test_skip_counts_and_drops_bad_lines():
    text = (line("1", ["4"] + [""] * 12) + line("2") + "x\n" + line("0", ["1.5"] + [""] * 12)
            + line("0", ["9"] + [""] * 12))
    b = parse_block(text.encode(), on_bad_line="skip")
    assert b.labels.tolist() == [1, 0] and b.dense[:, 0].tolist() == [4, 9]
    assert (b.lines, b.skipped) == (5, 3)
    with pytest.raises(ValueError, match="on_bad_line must be 'error' or 'skip'"):
        parse_block(b"", on_bad_line="ignore")


def test_field_names():
    assert [field_name(i) for i in (0, 1, 13, 14, COLUMNS - 1)] == [
        "label", "integer column I1", "integer column I13", "categorical column C1", "categorical column C26"]


def test_agrees_with_a_line_by_line_reading_of_the_rules():
    rng = np.random.default_rng(0)
    lines, expected = [], []
    for _ in range(300):
        ints = [rng.choice(["", str(rng.integers(-3, 10 ** 6))]) for _ in range(13)]
        cats = [rng.choice(["", f"{rng.integers(0, 2 ** 32):08x}"]) for _ in range(26)]
        label = str(rng.integers(0, 2))
        lines.append(line(label, ints, cats))
        # The seed's rules, one field at a time.
        expected.append([int(label)] + [max(int(x or 0), 0) for x in ints] + [int(c or "0", 16) % 1000 for c in cats])
    b = parse_block("".join(lines).encode(), max_ind_range=1000)
    got = np.concatenate([b.labels[:, None], b.dense, b.categorical], axis=1)
    assert got.tolist() == expected


def _random_lines(rng, count):
    out = []
    for _ in range(count):
        ints = [rng.choice(["", str(rng.integers(-10 ** 6, 10 ** 12)), "0", "-0", "9" * 18]) for _ in range(13)]
        cats = [rng.choice(["", f"{rng.integers(0, 2 ** 32):08x}", f"{rng.integers(0, 2 ** 63):X}", "f" * 16])
                for _ in range(26)]
        out.append(line(str(rng.integers(0, 2)), ints, cats))
    return out


# Damage that breaks one rule each (or none: a '0' inserted between digits is still an integer).
EDITS = ["\r", "\t", "\n", "-", "+", " ", "g", "G", ".", "x", "0", "9" * 19, "a" * 17, "2", "\x00", "\xff"]


def _compare(text: bytes, max_ind_range: int, on_bad_line: str) -> None:
    def run(parse):
        try:
            b = parse(text, "day_3", 11, max_ind_range, on_bad_line)
        except RawFormatError as e:
            return str(e)
        return b.records[:, :14].tolist(), b.categorical.tolist(), b.lines, b.skipped
    assert run(parse_block) == run(parse_checked)


@pytest.mark.parametrize("max_ind_range", [0, 40_000_000])
def test_compiled_pass_agrees_with_the_checked_parser(max_ind_range):
    """The fast path must accept only what the numpy parser accepts, with the
    same values; anything else falls back, so errors and skips are the same."""
    rng = np.random.default_rng(1)
    clean = "".join(_random_lines(rng, 200)).encode()
    b = parse_block(clean, max_ind_range=max_ind_range)
    assert len(b) == 200
    _compare(clean, max_ind_range, "error")
    for trial in range(300):
        text = bytearray(clean[: rng.integers(1, len(clean))] if trial % 10 == 0 else clean)  # cut mid-line too
        at = int(rng.integers(0, len(text)))
        edit = EDITS[trial % len(EDITS)].encode("latin-1")
        if trial % 3 == 0:
            text[at:at + 1] = b""              # a character lost
        else:
            text[at:at] = edit                 # a character (or run) inserted
        for mode in ("error", "skip"):
            _compare(bytes(text), max_ind_range, mode)


def test_values_beyond_63_bits_wrap_like_the_checked_parser():
    text = line("1", cats=["ffffffffffffffff", "8000000000000000"] + [""] * 24).encode()
    assert (parse_block(text).categorical[0, :2].tolist() == parse_checked(text).categorical[0, :2].tolist()
            == [-1, -2 ** 63])
