"""Raw Criteo lines, parsed with the original reference's rules; expected values written out by hand."""
import numpy as np
import pytest

from reference.data.criteo_raw import NUM_FIELDS, RawFormatError, field_name, parse_block

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
    text = line("1", ["4"] + [""] * 12) + line("2") + "x\n" + line("0", ["1.5"] + [""] * 12) + line("0", ["9"] + [""] * 12)
    b = parse_block(text.encode(), on_bad_line="skip")
    assert b.labels.tolist() == [1, 0] and b.dense[:, 0].tolist() == [4, 9]
    assert (b.lines, b.skipped) == (5, 3)
    with pytest.raises(ValueError, match="on_bad_line must be 'error' or 'skip'"):
        parse_block(b"", on_bad_line="ignore")


def test_field_names():
    assert [field_name(i) for i in (0, 1, 13, 14, NUM_FIELDS - 1)] == [
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
