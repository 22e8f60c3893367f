"""data_mode=random: batches of any shape drawn in memory (the original's
--data-generation=random), their seeds and bag lengths, the config keys, and
short runs through both command lines."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from reference import train
from reference.config import Config, ConfigError
from reference.data.jagged import JaggedIds
from reference.data.random_batches import RandomDataset, RandomSpec

SIZES = [1000, 3, 50_000_000, 17]  # arbitrary sizes: nothing is allocated per row


def dataset(bag_size=1, fixed=False, seed=0, split="train", batch=64, sizes=SIZES, dense=5):
    return RandomDataset(RandomSpec(sizes, dense, bag_size, fixed), batch, 6, seed, split)


def test_one_id_per_table_gives_the_dense_ids_of_the_files():
    data = dataset()
    b = data.batch(2)
    assert b.dense.shape == (64, 5) and b.dense.dtype == torch.float32
    assert 0 <= float(b.dense.min()) and float(b.dense.max()) < 1
    assert b.ids.shape == (64, 4) and b.ids.dtype == torch.int64
    assert b.labels.shape == (64,) and set(b.labels.tolist()) <= {0.0, 1.0}
    assert all(0 <= int(b.ids[:, t].min()) and int(b.ids[:, t].max()) < n for t, n in enumerate(SIZES))
    assert len(data) == 6 and data.num_samples == 6 * 64 and b.global_size == 64


@pytest.mark.parametrize("fixed", [False, True], ids=["1..N ids", "N ids"])
def test_bags_lengths_and_ids_within_bounds(fixed):
    data = dataset(bag_size=10, fixed=fixed, batch=500)
    ids = data.batch(0).ids
    assert isinstance(ids, JaggedIds) and ids.num_tables == 4 and ids.batch_size == 500
    lengths = ids.lengths()
    if fixed:
        assert bool((lengths == 10).all())
    else:
        assert int(lengths.min()) == 1 and int(lengths.max()) == 10  # 2000 bags reach both ends
    starts = ids.offsets[::500].tolist()
    for t, n in enumerate(SIZES):
        values = ids.values[starts[t]:starts[t + 1]]
        assert 0 <= int(values.min()) and int(values.max()) < n


def test_same_seed_same_batches_other_seed_or_split_other_batches():
    def flat(b):
        ids = b.ids if isinstance(b.ids, torch.Tensor) else torch.cat([b.ids.values, b.ids.offsets])
        return torch.cat([b.dense.flatten(), ids.flatten().float(), b.labels])

    for bag_size in (1, 4):
        first = dataset(bag_size, seed=3)
        again = dataset(bag_size, seed=3)
        assert torch.equal(flat(first.batch(4)), flat(again.batch(4)))  # any order: batch 4 read first here
        assert torch.equal(flat(first.batch(1)), flat(again.batch(1)))
        assert not torch.equal(flat(first.batch(1)), flat(first.batch(2)))
        assert not torch.equal(flat(first.batch(1)), flat(dataset(bag_size, seed=4).batch(1)))
        assert not torch.equal(flat(first.batch(1)), flat(dataset(bag_size, seed=3, split="eval").batch(1)))


@pytest.mark.parametrize("bag_size", [1, 3])
def test_a_ranks_part_is_its_samples_and_the_whole_batch_ids_of_its_tables(bag_size):
    data = dataset(bag_size, batch=9)
    whole = data.batch(5)
    parts = [data.batch_part(5, rank, 2, columns) for rank, columns in ((0, [0, 2]), (1, [3, 1]))]
    assert torch.equal(torch.cat([p.dense for p in parts]), whole.dense)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert [len(p) for p in parts] == [5, 4] and all(p.global_size == 9 for p in parts)
    for part, columns in zip(parts, ([0, 2], [3, 1]), strict=True):
        if bag_size == 1:
            assert torch.equal(part.ids, whole.ids[:, columns])
        else:
            expected = whole.ids.tables(columns)
            assert torch.equal(part.ids.values, expected.values) and torch.equal(part.ids.offsets, expected.offsets)


def test_batch_index_out_of_range():
    with pytest.raises(IndexError, match="batch 6 out of range 0..5"):
        dataset().batch(6)


@pytest.mark.parametrize("overrides, message", [
    (["data_mode=stream"], "data_mode: must be one of files, random, got 'stream'"),
    (["data_mode=random", "submission_division=open"], "table_sizes: data_mode=random draws ids for the tables"),
    (["data_mode=random", "table_sizes=5-6", "submission_division=open", "auc_threshold=0.8"],
     "auc_threshold: data_mode=random has coin-flip labels (AUC ~0.5 by construction)"),
    (["data_mode=random", "table_sizes=5-6"], "data_mode: random data is not the MLPerf dataset"),
    (["bag_size=4"], "bag_size: the binary files hold one id per table"),
    (["bag_size=0"], "bag_size: must be > 0, got 0"),
    (["random_train_batches=0"], "random_train_batches: must be > 0"),
    (["data_mode=random", "table_sizes=5-6", "submission_division=open", "bag_size=2", "qr_threshold=3"],
     "bag_size: bags of several ids go to ordinary tables only for now"),
])
def test_random_mode_keys_validated_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        Config.from_sources(None, overrides)
    assert message in str(e.value)


TINY = ["table_sizes=300-20-5000", "embedding_dim=8", "bottom_mlp=4-16-8", "top_mlp=16-1", "batch_size=64",
        "eval_batch_size=128", "random_train_batches=12", "random_eval_batches=2", "progress=false",
        "num_threads=1", "bag_size=5"]


def test_a_random_run_through_the_cli_trains_and_logs(tmp_path, capsys):
    code = train.main(["--config", os.path.join(ROOT, "configs", "random.yaml"), *TINY,
                       f"results_dir={tmp_path}", "run_name=bags"])
    out = capsys.readouterr().out
    assert code == 0, out  # no target: a run of its length is a success
    assert "status=success" in out and "steps=12" in out
    summary = json.loads((tmp_path / "bags.json").read_text())
    assert summary["config"]["data_mode"] == "random" and summary["table_sizes"] == [300, 20, 5000]
    assert 0.3 < summary["evaluations"][-1]["auc"] < 0.7  # coin-flip labels
    log = (tmp_path / "bags.log").read_text()
    assert '"key": "run_stop"' in log and '"status": "success"' in log and '"train_samples", "value": 768' in log


def test_run_and_time_in_random_mode_needs_no_data_files(tmp_path):
    env = dict(os.environ, DLRM_PYTHON=sys.executable, DLRM_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(["./run_and_time.sh", "--results-dir", str(tmp_path / "results"), "data_mode=random",
                           *TINY, "bag_size_fixed=true"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "--config configs/random.yaml" in proc.stderr and "--data-dir" not in proc.stderr
    assert "RESULT: status=success" in proc.stdout
    assert not (tmp_path / "cache").exists()  # no synthetic data was made
