import threading
import time

import pytest
import torch

from conftest import tiny_config
from reference import train
from reference.data.loader import Batch, BinaryDataset
from reference.data.pipeline import Batches


@pytest.fixture
def dataset(easy_data):
    return BinaryDataset(str(easy_data / "synthetic_train.bin"), 256)


def same(a, b) -> bool:
    return (torch.equal(a.dense, b.dense) and torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)
            and a.global_size == b.global_size)


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetched_batches_equal_direct_reads(dataset, depth):
    order = dataset.batch_order(0, True, 5)
    with Batches(dataset.batch, order, depth) as batches:
        got = list(batches)
    assert len(got) == len(order)
    assert all(same(b, dataset.batch(int(i))) for b, i in zip(got, order, strict=True))


def test_read_error_surfaces_at_its_batch(dataset):
    def read(i):
        if i == 3:
            raise ValueError("batch 3 is bad")
        return dataset.batch(i)

    seen = []
    with pytest.raises(ValueError, match="batch 3 is bad"):
        with Batches(read, range(6), 2) as batches:
            for batch in batches:
                seen.append(batch)
    assert len(seen) == 3  # every batch before the bad one was delivered


def test_stopping_early_ends_the_thread(dataset):
    reads = []

    def read(i):
        reads.append(i)
        return dataset.batch(i)

    before = threading.active_count()
    with Batches(read, range(dataset.num_batches), 2) as batches:
        for n, _ in enumerate(batches):
            if n == 1:
                break
    time.sleep(0.05)
    assert threading.active_count() == before
    assert len(reads) <= 2 + 2 + 1  # delivered, queued, and at most one read in flight


def test_depth_must_not_be_negative(dataset):
    with pytest.raises(ValueError, match="depth must be >= 0"):
        Batches(dataset.batch, [0], -1)


def test_training_is_identical_with_the_pipeline_on_or_off(easy_data, tmp_path):
    runs = [train.run(tiny_config(easy_data, tmp_path, prefetch_batches=depth, eval_every=7, epochs=2,
                                  eval_batch_size=512), out=open("/dev/null", "w"))
            for depth in (0, 4)]
    assert runs[0].losses == runs[1].losses and len(runs[0].losses) == 40
    assert runs[0].evaluations == runs[1].evaluations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the pinned copy stream runs where "
                                                          "torch sees one")
def test_cuda_batches_equal_direct_reads(dataset):
    device = torch.device("cuda")
    with Batches(dataset.batch, range(4), 2, device) as batches:
        got = list(batches)
    for i, batch in enumerate(got):
        assert batch.dense.device.type == "cuda"
        on_host = Batch(batch.dense.cpu(), batch.ids.cpu(), batch.labels.cpu(), batch.global_size)
        assert same(on_host, dataset.batch(i))
