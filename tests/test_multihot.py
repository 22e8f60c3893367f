"""Multi-hot data: the reference's lookup, the conversion of one-hot files, and the loader."""
import hashlib
import os

import numpy as np
import pytest
import torch

from conftest import SMALL_TABLES
from reference import preprocess
from reference.data.binary import DataError, write_binary, write_counts
from reference.data.jagged import JaggedIds
from reference.data.multihot import DCNV2_MULTIHOT_SIZES, load_multihot_sizes, pack, record_words, write_multihot
from reference.data.multihot_dataset import MultiHotDataset
from reference.preprocess import lookup as lookup_module
from reference.preprocess import multihot as multihot_module
from reference.preprocess.lookup import draw_blocks, open_lookups, write_lookups

SIZES = [3, 1, 2, 5, 1, 1, 4, 1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 1, 6, 9, 4, 2, 3, 1, 1]


def reference_lookups(table_sizes, sizes):
    """The reference's definition, literally: the global legacy generator seeded once, tables in order."""
    np.random.seed(0)
    tables = []
    for n, k in zip(table_sizes, sizes, strict=True):
        column = np.arange(n).reshape(-1, 1)
        tables.append(np.concatenate([column, np.random.randint(0, n, size=(n, k - 1))], axis=1) if k > 1
                      else column)
    return tables


def ours(folder, table_sizes, sizes):
    extra = open_lookups(str(folder), table_sizes, sizes)
    return [np.concatenate([np.arange(n).reshape(-1, 1), e], axis=1) if e is not None else np.arange(n).reshape(-1, 1)
            for n, e in zip(table_sizes, extra, strict=True)]


def test_lookup_drawn_in_chunks_is_the_reference_definition(tmp_path):
    table_sizes = [n * 3 + 1 for n in SMALL_TABLES]
    write_lookups(str(tmp_path), table_sizes, SIZES, chunk_ids=5)  # blocks of 1..5 rows: many chunk borders
    for t, (want, got) in enumerate(zip(reference_lookups(table_sizes, SIZES), ours(tmp_path, table_sizes, SIZES),
                                                    strict=True)):
        assert np.array_equal(want, got), f"table {t}"


def test_chunked_draws_equal_one_call_on_a_large_table():
    # 100,003 rows (above 2**16; masked rejection with a 17-bit mask) x 99 ids, drawn in 10,000-id blocks
    n = 100_003
    one = np.random.RandomState(0).randint(0, n, size=(n, 99))
    state = np.random.RandomState(0)
    blocks = np.concatenate(list(draw_blocks(state, n, 99, chunk_ids=10_000)))
    assert np.array_equal(one, blocks)
    # and the stream continues where the single call would have left it
    follow = np.random.RandomState(0)
    follow.randint(0, n, size=(n, 99))
    assert np.array_equal(follow.randint(0, 7, 50), state.randint(0, 7, 50))


def test_lookup_resumes_after_an_interrupted_table(tmp_path, monkeypatch):
    table_sizes = [n * 2 for n in SMALL_TABLES]
    write_lookups(str(tmp_path / "whole"), table_sizes, SIZES)

    def stop_at_table_11(table, ids):
        if table == 11:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_lookups(str(tmp_path / "resumed"), table_sizes, SIZES, on_table=stop_at_table_11)
    os.remove(lookup_module.lookup_path(str(tmp_path / "resumed"), 11))  # as if killed before its rename
    write_lookups(str(tmp_path / "resumed"), table_sizes, SIZES)
    for t, (a, b) in enumerate(zip(ours(tmp_path / "whole", table_sizes, SIZES),
                                   ours(tmp_path / "resumed", table_sizes, SIZES), strict=True)):
        assert np.array_equal(a, b), f"table {t}"


def one_hot_folder(folder, n=3000, seed=0, table_sizes=SMALL_TABLES):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    splits = {}
    for split, rows in (("train", n), ("test", n // 3), ("val", n // 3 + 1)):
        data = np.zeros((rows, 40), dtype=np.int32)
        data[:, 0] = rng.integers(0, 2, rows)
        data[:, 1:14] = rng.integers(0, 5000, (rows, 13))
        data[:, 14:] = rng.integers(0, table_sizes, (rows, 26))
        write_binary(str(folder / f"terabyte_processed_{split}.bin"), iter([data]))
        splits[split] = data
    write_counts(str(folder / "day_fea_count.npz"), table_sizes)
    return splits


def convert(inp, out, *extra):
    return preprocess.main(["multihot", "--in", str(inp), "--out", str(out), "--sizes",
                            ",".join(map(str, SIZES)), "--no-progress", *extra])


def test_multihot_files_hold_the_reference_bags_and_transformed_dense(tmp_path):
    splits = one_hot_folder(tmp_path / "in")
    assert convert(tmp_path / "in", tmp_path / "out", "--workers", "2") == 0
    lookups = reference_lookups(SMALL_TABLES, SIZES)
    assert load_multihot_sizes(str(tmp_path / "out" / "multihot_fea_count.npz")) == SIZES
    assert not (tmp_path / "out" / "multihot_work").exists()
    for split, rows in splits.items():
        ds = MultiHotDataset(str(tmp_path / "out" / f"multihot_{split}.bin"), 400, SIZES, SMALL_TABLES)
        assert ds.num_samples == len(rows)
        b = ds.batch(1)
        part = rows[400:800]
        assert torch.equal(b.labels, torch.from_numpy(part[:, 0].astype(np.float32)))
        assert torch.equal(b.dense, torch.from_numpy(np.log1p(part[:, 1:14], dtype=np.float32)))
        assert isinstance(b.ids, JaggedIds) and b.ids.lengths().tolist() == [[k] * len(part) for k in SIZES]
        want = np.concatenate([lookups[t][part[:, 14 + t] % SMALL_TABLES[t]].reshape(-1) for t in range(26)])
        assert torch.equal(b.ids.values, torch.from_numpy(want))


def test_conversion_resumes_to_identical_files(tmp_path, monkeypatch):
    one_hot_folder(tmp_path / "in", n=5000)
    assert convert(tmp_path / "in", tmp_path / "whole") == 0
    monkeypatch.setattr(multihot_module, "SYNC_BYTES", 1)  # progress synced after every block
    real_block = multihot_module.MultiHot._block
    calls = {"n": 0}

    def dies_at_block_4(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as kill -9 between two blocks
        return real_block(self, *args)
    monkeypatch.setattr(multihot_module.MultiHot, "_block", dies_at_block_4)
    with pytest.raises(KeyboardInterrupt):
        multihot_module.MultiHot(str(tmp_path / "in"), str(tmp_path / "resumed"), SIZES, progress=False,
                                 block_rows=1000).run()
    partial = tmp_path / "resumed" / "multihot_train.bin.partial"
    with open(partial, "ab") as f:
        f.write(b"\x07" * 999)  # a torn write after the last synced block
    assert convert(tmp_path / "in", tmp_path / "resumed") == 0
    for name in ("multihot_train.bin", "multihot_test.bin", "multihot_val.bin"):
        assert hashlib.sha256((tmp_path / "whole" / name).read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "resumed" / name).read_bytes()).digest(), name


def test_conversion_names_the_sample_with_a_bad_id(tmp_path, capsys):
    splits = one_hot_folder(tmp_path / "in", n=300)
    rows = splits["test"].copy()
    rows[57, 14 + 4] = SMALL_TABLES[4]
    write_binary(str(tmp_path / "in" / "terabyte_processed_test.bin"), iter([rows]))
    assert convert(tmp_path / "in", tmp_path / "out") == 2
    assert (f"terabyte_processed_test.bin: sample 57, categorical column 4: id {SMALL_TABLES[4]} is outside its "
            f"table of {SMALL_TABLES[4]} rows") in capsys.readouterr().err


def multihot_file(path, n=10, seed=0, sizes=SIZES, table_sizes=SMALL_TABLES):
    rng = np.random.default_rng(seed)
    bags = np.concatenate([rng.integers(0, table_sizes[t], (n, k)) for t, k in enumerate(sizes)], axis=1)
    records = pack(rng.integers(0, 2, n), rng.random((n, 13), dtype=np.float32), bags)
    write_multihot(str(path), iter([records[:3], records[3:]]), sizes)
    return records, bags


def test_ranks_parts_make_the_batch(tmp_path):
    records, bags = multihot_file(tmp_path / "m.bin", n=11)
    ds = MultiHotDataset(str(tmp_path / "m.bin"), 8, SIZES, SMALL_TABLES)
    whole = ds.batch(0)
    parts = [ds.batch_part(0, r, 2, [20, 3]) for r in range(2)]
    assert torch.equal(torch.cat([p.dense for p in parts]), whole.dense)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    for p in parts:  # every rank gets the whole batch's bags of its tables
        assert p.global_size == 8
        assert torch.equal(p.ids.values, whole.ids.tables([20, 3]).values)
        assert torch.equal(p.ids.offsets, whole.ids.tables([20, 3]).offsets)
    assert len(ds.batch(1)) == 3


def test_bad_multihot_files_are_named(tmp_path):
    records, _ = multihot_file(tmp_path / "m.bin", n=6)
    words = record_words(SIZES)
    with pytest.raises(DataError, match=rf"m.bin: size {6 * 4 * words} bytes is not a multiple of "
                                        rf"{4 * record_words(DCNV2_MULTIHOT_SIZES)}"):
        MultiHotDataset(str(tmp_path / "m.bin"), 4, DCNV2_MULTIHOT_SIZES)
    records[5, 1 + 13 + sum(SIZES[:19]) + 2] = SMALL_TABLES[19] + 3  # table 19, the third id of its bag
    write_multihot(str(tmp_path / "bad.bin"), iter([records]), SIZES)
    ds = MultiHotDataset(str(tmp_path / "bad.bin"), 4, SIZES, SMALL_TABLES)
    ds.batch(0)
    with pytest.raises(DataError, match=rf"bad.bin: sample 5, table 19, id 2 of its bag of 6: {SMALL_TABLES[19] + 3} "
                                        rf"is outside its table of {SMALL_TABLES[19]} rows"):
        ds.batch(1)
