"""Raw day files -> MLPerf binary files: the original reference's semantics, resume, bad input."""
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from reference import preprocess
from reference.data.binary import load_counts
from reference.data.loader import BinaryDataset

NAMES = preprocess.output_names("terabyte")


def line(label, ints=(), cats=()):
    ints = list(ints) + [""] * (13 - len(ints))
    cats = list(cats) + [""] * (26 - len(cats))
    return "\t".join([str(label)] + ints + cats) + "\n"


def write_days(folder, days, gz=()):
    folder.mkdir(exist_ok=True)
    for d, lines in enumerate(days):
        text = "".join(lines).encode()
        if d in gz:
            with gzip.open(folder / f"day_{d}.gz", "wb") as f:
                f.write(text)
        else:
            (folder / f"day_{d}").write_bytes(text)
    return folder


def run(raw, out, days, **kw):
    args = ["--dataset", "terabyte", "--raw", str(raw), "--out", str(out), "--days", str(days),
            "--buckets", str(kw.pop("buckets", 2)), "--no-progress"]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return preprocess.main(args)


def rows(path):
    return np.fromfile(path, dtype="<i4").reshape(-1, 40)


def test_handwritten_days_give_the_expected_binary_rows(tmp_path):
    # Day 0 and 1 train, day 2 test/val. Column C1 sees values a, b, a, c, b; C2 sees "" (0) and ff.
    raw = write_days(tmp_path / "raw", [
        [line(1, ["3", "-1", ""], ["a", "ff"]), line(0, ["", "7"], ["b"])],
        [line(0, ["12"], ["a", "ff"]), line(1, [], ["c"])],
        [line(1, ["5"], ["b", "ee"]), line(0, [], ["d"]), line(1, ["-4"], ["a"])],   # 3 rows: test 2, val 1
    ], gz={1})
    assert run(raw, tmp_path / "out", days=3, buckets=1, max_ind_range=100) == 0
    out = tmp_path / "out"
    # Ids by first appearance: C1 a=0 b=1 c=2 d=3 (hex mod 100: a=10, b=11, c=12, d=13);
    # C2 ff(255%100=55)=0, ""(0)=1, ee(238%100=38)=2; C3..C26 all "" -> one id 0.
    c3 = [0] * 24
    expected_train = {
        (1, 3, 0, 0) + (0,) * 10 + (0, 0) + tuple(c3),
        (0, 0, 7, 0) + (0,) * 10 + (1, 1) + tuple(c3),
        (0, 12, 0, 0) + (0,) * 10 + (0, 0) + tuple(c3),
        (1, 0, 0, 0) + (0,) * 10 + (2, 1) + tuple(c3),
    }
    assert {tuple(r) for r in rows(out / NAMES["train"])} == expected_train  # shuffled: compare as a set
    assert rows(out / NAMES["test"]).tolist() == [
        [1, 5] + [0] * 12 + [1, 2] + c3,
        [0] + [0] * 13 + [3, 1] + c3]
    assert rows(out / NAMES["val"]).tolist() == [[1] + [0] * 13 + [0, 1] + c3]
    assert load_counts(str(out / NAMES["counts"])) == [4, 3] + [1] * 24
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["splits"] == {"train": 4, "test": 2, "val": 1}
    assert manifest["table_sizes"] == [4, 3] + [1] * 24
    for name in (NAMES["train"], NAMES["test"], NAMES["val"], NAMES["counts"]):
        # the training file's checksum is taken while it is written: it must be the file's
        assert manifest["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert not (out / "work").exists()
    # Our loader reads it back, ids inside their tables.
    ds = BinaryDataset(str(out / NAMES["test"]), 2, manifest["table_sizes"])
    assert ds.batch(0).ids[1, 0].item() == 3


def test_first_appearance_spans_days_and_the_test_day(tmp_path):
    days = [[line(0, [], ["5"])], [line(0, [], ["3"])], [line(0, [], ["9"]), line(0, [], ["3"])]]
    raw = write_days(tmp_path / "raw", days)
    run(raw, tmp_path / "out", days=3, max_ind_range=1000)
    test = rows(tmp_path / "out" / NAMES["test"])
    assert test[:, 14].tolist() == [2]          # 9 is the third value seen: day 0's 5, day 1's 3
    assert rows(tmp_path / "out" / NAMES["val"])[:, 14].tolist() == [1]


def test_sub_sampling_keeps_every_positive_and_the_expected_share_of_negatives(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    day0 = [line(int(y), [str(i)]) for i, y in enumerate(labels)]
    raw = write_days(tmp_path / "raw", [day0, [line(0)] * 10])
    run(raw, tmp_path / "out", days=2, sub_sample_rate=0.75, max_ind_range=10)
    train = rows(tmp_path / "out" / NAMES["train"])
    kept = set(train[:, 1].tolist())
    positives = {i for i, y in enumerate(labels) if y == 1}
    negatives = {i for i, y in enumerate(labels) if y == 0}
    assert positives <= kept
    share = len(kept & negatives) / len(negatives)
    assert 0.22 < share < 0.28
    # The test/val day is never sub-sampled (the seed wrongly did).
    assert len(rows(tmp_path / "out" / NAMES["test"])) + len(rows(tmp_path / "out" / NAMES["val"])) == 10


def test_same_seed_same_bytes_other_seed_other_order(tmp_path):
    days = [[line(i % 2, [str(i)], [format(i, "x")]) for i in range(300)] for _ in range(3)]
    raw = write_days(tmp_path / "raw", days)
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        run(raw, tmp_path / out, days=3, seed=seed, buckets=3, max_ind_range=1000)
    a, b, c = (open(tmp_path / x / NAMES["train"], "rb").read() for x in "abc")
    assert a == b and a != c and sorted(rows(tmp_path / "a" / NAMES["train"]).tolist()) == \
        sorted(rows(tmp_path / "c" / NAMES["train"]).tolist())


def synthetic_raw(tmp_path, days=4, per_day=400):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(days):
        out.append([line(int(rng.integers(0, 2)), [str(rng.integers(-2, 50))], [format(int(rng.integers(0, 60)), "x")])
                    for _ in range(per_day)])
    return write_days(tmp_path / "raw", out, gz={1})


KILL_POINTS = ["after_day_1", "inside_day_2", "after_bucket_0", "inside_split"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_resume_after_a_kill_gives_byte_identical_outputs(tmp_path, point):
    raw = synthetic_raw(tmp_path)
    assert run(raw, tmp_path / "clean", days=4, buckets=3, max_ind_range=1000) == 0
    driver = f"""
import os, sys
sys.path.insert(0, {ROOT!r})
from reference import preprocess
point = {point!r}
original_map, original_split = preprocess.Pipeline._map_day, preprocess.Pipeline.split_last_day
def map_day(self, day, path, folder, is_train, bar, blocks):
    if point == "inside_day_2" and day == 2:
        open(os.path.join(folder, "bucket_0.bin"), "ab").write(b"garbage")
        os._exit(9)
    record = original_map(self, day, path, folder, is_train, bar, blocks)
    if point == "after_day_1" and day == 1:
        os.replace(folder, folder[:-len(".partial")])
        os._exit(9)
    return record
original_bucket = preprocess.Pipeline._shuffle_bucket
def shuffle_bucket(self, k, train_days, offset, partial, *rest):
    if point == "after_bucket_0" and k == 1:  # bucket 0 is complete; die half-way through writing bucket 1
        with open(partial, "r+b") as f:
            f.seek(offset * 160)
            f.write(b"x" * 800)
        os._exit(9)
    return original_bucket(self, k, train_days, offset, partial, *rest)
preprocess.Pipeline._shuffle_bucket = shuffle_bucket
preprocess.Pipeline._map_day = map_day
def split(self, records):
    if point == "inside_split":
        open(os.path.join(self.out, self.names["test"]) + ".partial", "wb").write(b"half")
        os._exit(9)
    return original_split(self, records)
preprocess.Pipeline.split_last_day = split
sys.exit(preprocess.main(sys.argv[1:]))
"""
    args = ["--dataset", "terabyte", "--raw", str(raw), "--out", str(tmp_path / "killed"), "--days", "4",
            "--buckets", "3", "--max-ind-range", "1000", "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", driver] + args, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert preprocess.main(args) == 0  # the rerun resumes
    for key in ("train", "test", "val", "counts"):
        resumed, uninterrupted = (open(tmp_path / run / NAMES[key], "rb").read() for run in ("killed", "clean"))
        assert resumed == uninterrupted, key
    clean = json.load(open(tmp_path / "clean" / "manifest.json"))
    resumed = json.load(open(tmp_path / "killed" / "manifest.json"))
    assert clean["files"] == resumed["files"] and clean["splits"] == resumed["splits"]


@pytest.mark.parametrize("bad, message", [
    ("1\t2\n", "day_1:3: 3 tab-separated fields, expected 40"[:0] + "day_1:3: 2 tab-separated fields, expected 40"),
    (line(1, ["1x"]), "day_1:3: integer column I1 (field 2 of 40): expected an integer, got '1x'"),
    (line(1, [], ["zz"]), "day_1:3: categorical column C1 (field 15 of 40): expected hexadecimal, got 'zz'"),
    (line(3), "day_1:3: label (field 1 of 40): must be 0 or 1, got '3'"),
    (line(1).replace("\n", "\r\n"), "day_1:3: line ends with CRLF"),
])
def test_bad_lines_stop_with_file_line_and_field_and_leave_no_output(tmp_path, bad, message, capsys):
    raw = write_days(tmp_path / "raw", [[line(0)] * 3, [line(0), line(1), bad, line(0)], [line(0)] * 2])
    assert run(raw, tmp_path / "out", days=3) == 2
    assert message in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith((".bin", ".npz", ".json"))]


def test_skip_mode_counts_bad_lines_per_file(tmp_path):
    raw = write_days(tmp_path / "raw", [[line(0), "garbage\n", line(1)], [line(0), line(3)], [line(0)] * 2])
    assert run(raw, tmp_path / "out", days=3, on_bad_line="skip") == 0
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert [i["skipped"] for i in manifest["inputs"]] == [1, 1, 0]
    assert manifest["splits"] == {"train": 3, "test": 1, "val": 1}


def test_truncated_gzip_and_empty_file(tmp_path, capsys):
    raw = write_days(tmp_path / "raw", [[line(0)] * 2000, [line(1)] * 5, [line(0)] * 2], gz={0})
    data = (raw / "day_0.gz").read_bytes()
    (raw / "day_0.gz").write_bytes(data[: len(data) // 2])
    assert run(raw, tmp_path / "out", days=3) == 2
    assert "day_0.gz:1: cannot read past this line" in capsys.readouterr().err
    raw2 = write_days(tmp_path / "raw2", [[line(0)], [], [line(0)] * 2])
    assert run(raw2, tmp_path / "out2", days=3) == 2
    assert "day_1: the file is empty" in capsys.readouterr().err


def test_clear_errors_before_any_work(tmp_path, capsys):
    raw = write_days(tmp_path / "raw", [[line(0)], [line(0)]])
    assert run(raw, tmp_path / "out", days=3) == 2
    assert "missing day_2" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "kaggle_processed_train.bin").write_bytes(b"")
    assert run(raw, other, days=2) == 2
    assert "holds another dataset's files (kaggle_processed_train.bin)" in capsys.readouterr().err
    assert run(raw, tmp_path / "done", days=2, seed=1) == 0
    assert run(raw, tmp_path / "done", days=2, seed=2) == 2
    assert "holds a dataset made with other options" in capsys.readouterr().err
    (raw / "day_0.gz").write_bytes(gzip.compress(line(0).encode()))
    assert run(raw, tmp_path / "x", days=2) == 2
    assert "both day_0 and day_0.gz exist" in capsys.readouterr().err


def test_synthetic_raw_days_round_trip_through_preprocessing(tmp_path):
    from reference.synthetic import SyntheticSpec, Teacher, raw_lines, write_raw_days
    spec = SyntheticSpec(seed=5, chunk_rows=500)
    write_raw_days(str(tmp_path / "raw"), spec, days=3, rows_per_day=1001, gz_days=(1,))
    assert run(tmp_path / "raw", tmp_path / "out", days=3, max_ind_range=40_000_000) == 0
    # The teacher's rows of the last day, drawn the way the writer drew them.
    teacher, rng, expected = Teacher(spec), np.random.default_rng([spec.seed, 102]), []
    for size in (500, 500, 1):
        chunk, _ = teacher.sample(rng, size)
        raw_lines(chunk, rng, 40_000_000)
        expected.append(chunk)
    expected = np.concatenate(expected)
    got = np.concatenate([rows(tmp_path / "out" / NAMES["test"]), rows(tmp_path / "out" / NAMES["val"])])
    assert len(rows(tmp_path / "out" / NAMES["test"])) == 501  # ceil(1001 / 2)
    assert (got[:, :14] == expected[:, :14]).all()
    for c in range(26):  # ids are renumbered by first appearance, one to one with the teacher's
        pairs = set(zip(expected[:, 14 + c].tolist(), got[:, 14 + c].tolist(), strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["splits"]["train"] == 2002 and manifest["inputs"][1]["path"].endswith("day_1.gz")
    # Read the way the original reference's CriteoBinDataset does (seek to idx x batch bytes,
    # np.frombuffer(int32) viewed as (-1, 40), log(x + 1) of columns 1..13): same values as our loader.
    for name in (NAMES["train"], NAMES["test"]):
        path = tmp_path / "out" / name
        ours = BinaryDataset(str(path), 256, manifest["table_sizes"])
        with open(path, "rb") as f:
            for idx in range(ours.num_batches):
                f.seek(idx * 256 * 40 * 4)
                original = np.frombuffer(f.read(256 * 40 * 4), dtype=np.int32).reshape(-1, 40)
                batch = ours.batch(idx)
                assert (original[:, 0] == batch.labels.numpy()).all()
                assert np.allclose(np.log(original[:, 1:14].astype(np.float32) + 1), batch.dense.numpy())
                assert (original[:, 14:] == batch.ids.numpy()).all()
                assert (original[:, 14:] < np.asarray(manifest["table_sizes"])).all()


def test_kaggle_train_txt_is_split_into_days_like_the_seed(tmp_path):
    # 15 lines in 7 days: 15 = 7 * 2 + 1, so day 0 has 3 lines and days 1-6 have 2.
    lines = [line(i % 2, [str(i)], [format(0xFFFFFF00 + i % 4, "x")]) for i in range(15)]
    (tmp_path / "train.txt").write_text("".join(lines))
    days = preprocess.kaggle_days(str(tmp_path / "train.txt"), 7)
    assert [d.first_line for d in days] == [1, 4, 6, 8, 10, 12, 14]
    code = preprocess.main(["--dataset", "kaggle", "--raw", str(tmp_path / "train.txt"), "--out",
                            str(tmp_path / "out"), "--buckets", "1", "--no-progress"])
    assert code == 0
    names = preprocess.output_names("kaggle")
    assert names["train"] == "kaggle_processed_train.bin" and names["counts"] == "kaggle_fea_count.npz"
    assert sorted(rows(tmp_path / "out" / names["train"])[:, 1].tolist()) == list(range(13))
    assert rows(tmp_path / "out" / names["test"])[:, 1].tolist() == [13]
    assert rows(tmp_path / "out" / names["val"])[:, 1].tolist() == [14]
    # No max-ind-range for Kaggle: the raw 32-bit values are the keys, numbered by first appearance.
    assert rows(tmp_path / "out" / names["val"])[:, 14].tolist() == [14 % 4]
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["options"]["max_ind_range"] == 0 and manifest["options"]["days"] == 7
    assert [i["lines"] for i in manifest["inputs"]] == [3, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("dataset", ["terabyte", "kaggle"])
def test_blocks_smaller_than_a_line_give_the_same_outputs(tmp_path, monkeypatch, dataset):
    """Reading in blocks of 64 bytes: lines straddle blocks, and a long line after
    short ones grows the buffer while the previous block is still held; gzip days
    and Kaggle's byte ranges of one file included."""
    rng = np.random.default_rng(4)
    long = line(1, [str(v) for v in rng.integers(0, 10 ** 6, 13)], [f"{v:08x}" for v in rng.integers(0, 2 ** 32, 26)])
    days = [[line(d % 2), line(1, ["5"], ["a"]), long, line(0, ["7"], [format(d, "x")]), long] for d in range(4)]
    raw = write_days(tmp_path / "raw", days, gz={1})
    if dataset == "kaggle":
        text = b"".join("".join(day).encode() for day in days)
        (tmp_path / "train.txt").write_bytes(text[:-1])  # the last line without its newline
        raw = tmp_path / "train.txt"

    def make(out):
        return preprocess.main(["--dataset", dataset, "--raw", str(raw), "--out", str(out), "--days", "4",
                                "--buckets", "2", "--no-progress"])
    assert make(tmp_path / "ref") == 0
    monkeypatch.setattr(preprocess.days, "BLOCK_BYTES", 64)
    assert make(tmp_path / "small") == 0
    names = preprocess.output_names(dataset)
    for key in ("train", "test", "val", "counts"):
        assert (tmp_path / "small" / names[key]).read_bytes() == (tmp_path / "ref" / names[key]).read_bytes()


def test_resume_redoes_days_whose_input_changed(tmp_path, capsys):
    raw = write_days(tmp_path / "raw", [[line(0, [], ["a"])], [line(1, [], ["b"]), "bad line\n"], [line(0)] * 2])
    assert run(raw, tmp_path / "out", days=3, max_ind_range=100) == 2  # stops at day 1; day 0 is complete
    assert "day_1:2:" in capsys.readouterr().err
    write_days(tmp_path / "raw", [[line(0, [], ["c"]), line(1, [], ["d"])], [line(1, [], ["b"])], [line(0)] * 2])
    assert run(raw, tmp_path / "out", days=3, max_ind_range=100) == 0
    fresh = tmp_path / "fresh"
    assert run(raw, fresh, days=3, max_ind_range=100) == 0
    for key in ("train", "test", "val", "counts"):
        assert open(tmp_path / "out" / NAMES[key], "rb").read() == open(fresh / NAMES[key], "rb").read(), key
    # c, d (the edited day 0), b, and the test day's empty value: a stale day 0 would give 3.
    assert load_counts(str(tmp_path / "out" / NAMES["counts"]))[0] == 4


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_outputs_do_not_depend_on_the_number_of_parse_workers(tmp_path, workers):
    raw = synthetic_raw(tmp_path, days=5, per_day=300)
    assert run(raw, tmp_path / "ref", days=5, buckets=2, max_ind_range=1000, workers=0) == 0
    assert run(raw, tmp_path / "par", days=5, buckets=2, max_ind_range=1000, workers=workers) == 0
    for key in ("train", "test", "val", "counts"):
        assert open(tmp_path / "par" / NAMES[key], "rb").read() == open(tmp_path / "ref" / NAMES[key], "rb").read()


def test_an_error_in_a_parse_worker_reaches_the_caller(tmp_path, capsys):
    raw = write_days(tmp_path / "raw", [[line(0)] * 3, [line(0), line(7)], [line(0)] * 2])
    assert run(raw, tmp_path / "out", days=3, workers=2) == 2
    assert "day_1:2: label (field 1 of 40): must be 0 or 1, got '7'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["map", "shuffle"])
def test_a_failed_write_in_a_writer_thread_stops_the_run_and_a_rerun_resumes(tmp_path, monkeypatch, capsys, stage):
    raw = synthetic_raw(tmp_path, days=4, per_day=300)
    assert run(raw, tmp_path / "clean", days=4, buckets=3, max_ind_range=1000) == 0
    calls = []

    def disk_full(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", "bucket")
        return original(*args)
    target = (preprocess.pipeline._DayWriter, "_write") if stage == "map" else (preprocess.pipeline, "_pwrite_all")
    original = getattr(*target)
    monkeypatch.setattr(*target, disk_full)
    assert run(raw, tmp_path / "out", days=4, buckets=3, max_ind_range=1000, workers=2) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command to resume" in err
    monkeypatch.setattr(*target, original)
    assert run(raw, tmp_path / "out", days=4, buckets=3, max_ind_range=1000, workers=2) == 0
    for key in ("train", "test", "val", "counts"):
        assert open(tmp_path / "out" / NAMES[key], "rb").read() == open(tmp_path / "clean" / NAMES[key], "rb").read()


# sha256 prefixes of the outputs of the numpy-only pipeline (commit 54ef3bf), before the compiled
# parser, the hash-table vocabulary and the threaded shuffle: the rewrite must not move a byte.
# (They also depend on the synthetic generator: regenerate them only for a change there.)
GOLDEN = {
    "hashed": (["--max-ind-range", "100000", "--sub-sample-rate", "0.3"], 22_073,
               ["415554a22dc5a7a7", "03ae76f337b3e5b3", "65be966e6bf5aa6e"]),
    "raw": (["--max-ind-range", "0"], 23_675, ["1aeda91f2b2b991e", "a0888397d32c7ff4", "4d49ffa8fcfedc99"]),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_outputs_are_byte_identical_to_the_numpy_pipeline(tmp_path, case):
    from reference.synthetic import SyntheticSpec, write_raw_days
    extra, embedding_rows, hashes = GOLDEN[case]
    write_raw_days(str(tmp_path / "raw"), SyntheticSpec(seed=11), days=4, rows_per_day=3000, gz_days=(1,))
    assert preprocess.main(["--dataset", "terabyte", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                            "--days", "4", "--buckets", "3", "--seed", "7", "--no-progress"] + extra) == 0
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert [manifest["files"][NAMES[k]]["sha256"][:16] for k in ("train", "test", "val")] == hashes
    assert sum(manifest["table_sizes"]) == embedding_rows
