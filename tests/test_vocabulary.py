import numpy as np
import pytest

from reference.data.vocabulary import Vocabulary


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
    mark = v.marks()
    v.map(rng.integers(0, 30, (40, 2)))
    day1 = v.added_since(mark)
    w = Vocabulary(2, 30)
    w.extend(v.added_since([0, 0]))
    probe = rng.integers(0, 30, (60, 2))
    assert w.map(probe.copy()).tolist() == v.map(probe.copy()).tolist()
    assert sum(len(x) for x in day1) <= 60


def test_out_of_range_values_rejected():
    with pytest.raises(ValueError, match=r"values must lie in \[0, 10\)"):
        Vocabulary(1, 10).map(np.array([[10]]))

