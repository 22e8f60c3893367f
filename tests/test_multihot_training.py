"""Training reads multi-hot files (data_format=multihot) and dcnv2 one-hot files (dense_transform=log3);
the keys are validated with errors that name them."""
import numpy as np
import pytest
import torch

from conftest import SMALL_TABLES, tiny_config
from reference import train
from reference.config import Config, ConfigError
from reference.data.binary import DataError, write_binary
from reference.data.loader import BinaryDataset
from reference.synthetic import SyntheticSpec, generate

SIZES = [3, 1, 2, 5, 1, 1, 4, 1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 1, 6, 9, 4, 2, 3, 1, 1]
MULTIHOT_KEYS = dict(data_format="multihot", train_file="multihot_train.bin", eval_file="multihot_test.bin",
                     counts_file="multihot_fea_count.npz")


@pytest.fixture(scope="module")
def multihot_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihot_data")
    spec = SyntheticSpec(train_samples=8192, eval_samples=2048, table_sizes=SMALL_TABLES, seed=7, dense_scale=1.2,
                         id_effect_scale=0.5, chunk_rows=4096, multihot_sizes=SIZES)
    meta = generate(str(out), spec, log=lambda *a: None)
    return out, meta


def test_a_small_model_learns_the_bag_teacher(multihot_data, tmp_path):
    data, meta = multihot_data
    cfg = tiny_config(data, tmp_path, **MULTIHOT_KEYS, epochs=2, eval_every_epochs=0.5)
    result = train.run(cfg, out=open("/dev/null", "w"))
    aucs = [e["auc"] for e in result.evaluations]
    assert result.steps == 2 * 8192 // 256
    assert aucs[-1] > 0.75 and aucs[-1] > aucs[0], aucs  # the teacher's own AUC is about 0.9
    assert meta["best_auc_test"] > aucs[-1]


def test_multihot_sizes_must_match_the_data(multihot_data, tmp_path):
    data, _ = multihot_data
    cfg = tiny_config(data, tmp_path, **MULTIHOT_KEYS, multihot_sizes=[2] * 26)
    with pytest.raises(ConfigError, match=r"test: multihot_sizes \[2, 2.*differ from those the "
                                          r"data was made with"):
        train.run(cfg, out=open("/dev/null", "w"))
    cfg = tiny_config(data, tmp_path, train_file="multihot_train.bin", eval_file="multihot_test.bin",
                      counts_file="multihot_fea_count.npz")  # read as one-hot: the record size gives it away
    with pytest.raises(DataError, match="not a multiple of 160"):
        train.run(cfg, out=open("/dev/null", "w"))


@pytest.mark.parametrize("overrides, key, message", [
    (["multihot_sizes=3-2-1"], "multihot_sizes", "set data_format=multihot"),
    (["data_format=multihot", "multihot_sizes=[1, 0]"], "multihot_sizes", "bag lengths >= 1"),
    (["data_format=multihot", "dense_transform=log3"], "dense_transform", "store the dense features transformed"),
    (["data_format=bags"], "data_format", "must be one of onehot, multihot"),
    (["dense_transform=log2"], "dense_transform", "must be one of log1p, log3"),
    (["data_format=multihot", "qr_threshold=10", "submission_division=open"], "data_format", "ordinary tables"),
])
def test_bad_data_keys_are_named(overrides, key, message):
    with pytest.raises(ConfigError, match=rf"command line: {key}: .*{message}"):
        Config.from_sources(None, overrides)


def test_dcnv2_one_hot_files_take_ln_x_plus_3(tmp_path):
    rows = np.zeros((4, 40), dtype=np.int32)
    rows[:, 1:14] = [[-2], [-1], [0], [7]]
    path = str(tmp_path / "d.bin")
    write_binary(path, iter([rows]))
    with pytest.raises(DataError, match="sample 0 has a negative dense feature.*dense_transform=log3"):
        BinaryDataset(path, 4).batch(0)
    dense = BinaryDataset(path, 4, dense_transform="log3").batch(0).dense
    assert torch.equal(dense[:, 0], torch.tensor(np.log(np.array([1.0, 2.0, 3.0, 10.0])).astype(np.float32)))
    rows[2, 5] = -3
    write_binary(path, iter([rows]))
    with pytest.raises(DataError, match="sample 2 has a dense feature below -2"):
        BinaryDataset(path, 4, dense_transform="log3").batch(0)
