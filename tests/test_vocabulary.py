import numpy as np
import pytest

from reference.preprocess.vocabulary import Vocabulary


@pytest.mark.parametrize("max_ind_range", [0, 100])
def test_ids_in_order_of_first_appearance_across_blocks(max_ind_range):
    v = Vocabulary(2, max_ind_range)
    a = v.map(np.array([[7, 3], [5, 3], [7, 9], [2, 1]]))
    assert a.tolist() == [[0, 0], [1, 0], [0, 1], [2, 2]]
    b = v.map(np.array([[5, 4], [8, 3], [2, 4], [9, 0]]))  # a later day: new values continue the numbering
    assert b.tolist() == [[1, 3], [3, 0], [2, 3], [4, 4]]
    assert v.sizes == [5, 5]


def test_large_raw_values_without_max_ind_range():
    v = Vocabulary(1, 0)
    ids = v.map(np.array([[0xFFFFFFFF], [0x68FD1E64], [0xFFFFFFFF], [0]]))
    assert ids[:, 0].tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("max_ind_range", [0, 50])
def test_agrees_with_a_python_dictionary(max_ind_range):
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 50, (200, 3)) for _ in range(4)]
    v = Vocabulary(3, max_ind_range)
    got = np.concatenate([v.map(b) for b in blocks])
    expected = []
    dicts = [{} for _ in range(3)]
    for row in np.concatenate(blocks):
        expected.append([dicts[c].setdefault(int(x), len(dicts[c])) for c, x in enumerate(row)])
    assert got.tolist() == expected


def test_saved_additions_replay_to_the_same_state():
    rng = np.random.default_rng(1)
    v = Vocabulary(2, 30)
    v.map(rng.integers(0, 30, (40, 2)))
    day0 = v.take_additions()
    v.map(rng.integers(0, 30, (40, 2)))
    day1 = v.take_additions()
    assert [a.size for a in day0] == [v.sizes[c] - day1[c].size for c in range(2)]
    assert [a.size for a in v.take_additions()] == [0, 0]  # taken: forgotten, so memory holds a day at most
    w = Vocabulary(2, 30)
    w.extend(day0)
    w.extend(day1)
    assert w.sizes == v.sizes and [a.size for a in w.take_additions()] == [0, 0]  # replays are not new
    probe = rng.integers(0, 30, (60, 2))
    assert w.map(probe.copy()).tolist() == v.map(probe.copy()).tolist()


def test_out_of_range_values_rejected():
    with pytest.raises(ValueError, match=r"values must lie in \[0, 10\)"):
        Vocabulary(1, 10).map(np.array([[10]]))



def _python_ids(blocks):
    dicts = [{} for _ in range(blocks[0].shape[1])]
    return [[dicts[c].setdefault(int(x), len(dicts[c])) for c, x in enumerate(row)] for row in np.concatenate(blocks)]


@pytest.mark.parametrize("max_ind_range", [0, 100_000])
def test_tables_grow_and_become_dense_with_the_same_ids(max_ind_range):
    """Column 0 passes several rehashes (and, with a range, the switch to the
    dense array); column 1 keeps three values in the smallest table."""
    rng = np.random.default_rng(2)
    blocks = [np.stack([rng.integers(0, 100_000, 20_000), rng.integers(0, 3, 20_000)], axis=1) for _ in range(3)]
    v = Vocabulary(2, max_ind_range)
    got = np.concatenate([v.map(b) for b in blocks])
    assert got.tolist() == _python_ids(blocks)
    dense = v._columns[0].dense is not None
    assert dense == (max_ind_range > 0)
    assert v._columns[1].nbytes == 1024 * 12  # three values: the first, smallest table
    if dense:  # the dense array is the bound: a hash table is never kept once it would be larger
        assert v._columns[0].nbytes == 4 * max_ind_range


def test_values_beyond_63_bits_are_keys_like_any_other():
    v = Vocabulary(1, 0)
    assert v.map(np.array([[-1], [-2 ** 63], [-1], [5]]))[:, 0].tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("values", [[[3], [-1]], [[3], [10]]])
def test_out_of_range_values_rejected_in_both_table_kinds(values):
    hashed, dense = Vocabulary(1, 10), Vocabulary(1, 10)
    dense.map(np.arange(5)[:, None])
    dense._columns[0]._grow()  # 10 values never fill a table of 1024: switch by hand
    assert dense._columns[0].dense is not None
    for v in (hashed, dense):
        with pytest.raises(ValueError, match=r"values must lie in \[0, 10\), got"):
            v.map(np.array(values))


def test_replaying_known_values_is_an_error():
    v = Vocabulary(1, 0)
    v.map(np.array([[4], [5]]))
    with pytest.raises(ValueError, match="column 0: saved additions repeat 1 known values"):
        v.extend([np.array([5, 6])])


def test_ids_are_written_into_a_view_of_the_records():
    records = np.zeros((3, 5), dtype=np.int32)
    Vocabulary(2, 0).map(np.array([[9, 9], [8, 9], [9, 7]]), out=records[:, 3:])
    assert records[:, 3:].tolist() == [[0, 0], [1, 0], [0, 1]] and not records[:, :3].any()


def test_columns_mapped_in_threads_get_the_same_ids():
    rng = np.random.default_rng(5)
    blocks = [rng.integers(0, 5000, (3000, 7)) for _ in range(4)]
    one, three = Vocabulary(7, 10_000, threads=1), Vocabulary(7, 10_000, threads=3)
    for b in blocks:
        assert one.map(b).tolist() == three.map(b).tolist()
    assert one.sizes == three.sizes
    assert [a.tolist() for a in one.take_additions()] == [a.tolist() for a in three.take_additions()]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Vocabulary(1, 0, threads=0)
