import numpy as np
import pytest
import torch

from reference.data.binary import DataError, load_counts, write_binary, write_counts
from reference.data.loader import BinaryDataset


def make_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 40), dtype=np.int32)
    rows[:, 0] = rng.integers(0, 2, n)
    rows[:, 1:14] = rng.integers(0, 1000, (n, 13))
    rows[:, 14:] = rng.integers(0, 5, (n, 26))
    return rows


def test_read_back_batches_with_log_transform(tmp_path):
    rows = make_rows(10)
    path = str(tmp_path / "x.bin")
    assert write_binary(path, iter([rows[:4], rows[4:]])) == 10
    ds = BinaryDataset(path, batch_size=4, table_sizes=[5] * 26)
    assert (ds.num_samples, len(ds)) == (10, 3)
    b = ds.batch(2)
    assert len(b) == 2  # the last, partial batch
    torch.testing.assert_close(b.dense, torch.from_numpy(np.log(rows[8:, 1:14].astype(np.float32) + 1)))
    assert torch.equal(b.ids, torch.from_numpy(rows[8:, 14:].astype(np.int64)))
    assert torch.equal(b.labels, torch.from_numpy(rows[8:, 0].astype(np.float32)))
    assert b.ids.dtype == torch.int64 and b.dense.dtype == torch.float32
    assert sum(len(ds.batch(i)) for i in range(len(ds))) == 10


def test_file_is_memory_mapped_not_loaded(tmp_path):
    path = str(tmp_path / "x.bin")
    write_binary(path, iter([make_rows(8)]))
    ds = BinaryDataset(path, batch_size=4)
    assert isinstance(ds._data, np.memmap)


def test_truncated_file_rejected(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(make_rows(3).tobytes()[:-7])
    with pytest.raises(DataError, match=r"t.bin: size 473 bytes is not a multiple of 160"):
        BinaryDataset(str(path), batch_size=2)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="holds no samples"):
        BinaryDataset(str(tmp_path / "empty.bin"), batch_size=2)
    with pytest.raises(DataError, match="not found"):
        BinaryDataset(str(tmp_path / "missing.bin"), batch_size=2)


def test_id_outside_its_table_rejected(tmp_path):
    rows = make_rows(6)
    rows[5, 14 + 3] = 9
    path = str(tmp_path / "x.bin")
    write_binary(path, iter([rows]))
    ds = BinaryDataset(path, batch_size=4, table_sizes=[5] * 26)
    ds.batch(0)
    with pytest.raises(DataError, match="sample 5, categorical column 3: id 9 is outside its table of 5 rows"):
        ds.batch(1)


def test_batch_order_is_seeded_per_epoch(tmp_path):
    path = str(tmp_path / "x.bin")
    write_binary(path, iter([make_rows(40)]))
    ds = BinaryDataset(path, batch_size=4)
    assert list(ds.batch_order(0, False, 1)) == list(range(10))
    a, b = ds.batch_order(0, True, 1), ds.batch_order(1, True, 1)
    assert sorted(a) == list(range(10)) and list(a) != list(b)
    assert list(a) == list(ds.batch_order(0, True, 1))


def test_counts_file(tmp_path):
    path = str(tmp_path / "c.npz")
    write_counts(path, [3, 4])
    assert load_counts(path) == [3, 4]
    np.savez(tmp_path / "bad.npz", other=np.ones(2))
    with pytest.raises(DataError, match="no array named 'counts'"):
        load_counts(str(tmp_path / "bad.npz"))
