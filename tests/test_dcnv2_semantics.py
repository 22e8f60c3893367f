"""--semantics dcnv2 on real Criteo rows against a direct reading of the DLRMv2 reference's rules
(REFERENCE-DCNV2.md): dense ln(x + 3) with negatives kept and missing -> 0, ids from 2 in
first-seen order over all days, then mod the table sizes."""
import json
import math
import os

import numpy as np
import pytest

from conftest import ROOT
from reference import preprocess
from reference.data.binary import load_counts
from reference.data.multihot_dataset import MultiHotDataset

SAMPLE = os.path.join(os.path.dirname(ROOT), "shared", "data", "criteo-samples",
                      "kaggle_dac_first1000_as_published.txt")
# Small sizes, so the modulo folds many ids; a 3 as the reference's table 5 has.
TABLE_SIZES = [97, 13, 1000, 50, 7, 3, 600, 31, 63, 500, 211, 89, 10, 40, 300, 155, 4, 976, 14, 400, 250, 450,
               120, 77, 108, 36]
DAYS = [(0, 400), (400, 800), (800, 1000)]


def sample_lines():
    if not os.path.isfile(SAMPLE):
        pytest.skip(f"real Criteo rows not available ({SAMPLE})")
    with open(SAMPLE) as f:
        # the published copy strips trailing empty fields: pad to the 40 of the original format
        return [line.rstrip("\n") + "\t" * (39 - line.rstrip("\n").count("\t")) for line in f]


def direct(lines):
    """The rules read literally, one line at a time."""
    seen = [dict() for _ in range(26)]
    rows = []
    for line in lines:
        fields = line.split("\t")
        dense = [int(x) if x else 0 for x in fields[1:14]]
        ids = []
        for c, x in enumerate(fields[14:]):
            value = int(x, 16) if x else 0
            first = seen[c].setdefault(value, len(seen[c]))
            ids.append((first + 2) % TABLE_SIZES[c])
        rows.append([int(fields[0])] + dense + ids)
    return np.array(rows, dtype=np.int64)


def test_dcnv2_files_match_a_direct_reading_of_the_rules(tmp_path, capsys):
    lines = sample_lines()
    raw = tmp_path / "raw"
    raw.mkdir()
    for d, (lo, hi) in enumerate(DAYS):
        extra = "1\tnot-a-row\n" if d == 0 else ""  # day 0 through the checked parser (a bad line, skipped)
        (raw / f"day_{d}").write_text("\n".join(lines[lo:hi]) + "\n" + extra)
    out = tmp_path / "out"
    assert preprocess.main(["--dataset", "terabyte", "--raw", str(raw), "--out", str(out), "--days", "3",
                            "--buckets", "1", "--no-progress", "--on-bad-line", "skip", "--semantics", "dcnv2",
                            "--table-sizes", ",".join(map(str, TABLE_SIZES))]) == 0
    want = direct(lines)
    assert (want[:, 1:14] < 0).any(), "the sample has negative integers: they must be kept"
    names = preprocess.output_names("terabyte")

    def read(name):
        return np.fromfile(out / names[name], dtype="<i4").reshape(-1, 40).astype(np.int64)
    last = want[800:]
    n_test = math.ceil(len(last) / 2)
    assert np.array_equal(read("test"), last[:n_test])
    assert np.array_equal(read("val"), last[n_test:])
    train = read("train")  # shuffled: the same rows in another order
    assert np.array_equal(train[np.lexsort(train.T[::-1])], want[:800][np.lexsort(want[:800].T[::-1])])
    assert load_counts(str(out / names["counts"])) == TABLE_SIZES
    assert json.load(open(out / "manifest.json"))["options"]["semantics"] == "dcnv2"

    # The multi-hot stage takes the semantics from the manifest: ln(x + 3) stored as float32.
    assert preprocess.main(["multihot", "--in", str(out), "--out", str(out), "--no-progress"]) == 0
    ds = MultiHotDataset(str(out / "multihot_test.bin"), n_test, [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5,
                                                                  1, 1, 1, 12, 100, 27, 10, 3, 1, 1], TABLE_SIZES)
    batch = ds.batch(0)
    expected = np.log(last[:n_test, 1:14].astype(np.float64) + 3).astype(np.float32)
    assert np.array_equal(batch.dense.numpy(), expected)
    assert "(dcnv2 dense)" in capsys.readouterr().out


def test_dcnv2_refuses_v1_only_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.main(["--dataset", "terabyte", "--raw", str(tmp_path), "--out", str(tmp_path / "o"),
                         "--semantics", "dcnv2", "--sub-sample-rate", "0.5"])
    assert "keeps every row" in capsys.readouterr().err
