import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reference.metrics import accuracy, auc_from_groups, evaluate_scores, log_loss, roc_auc, roc_auc_tensor


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = 20000
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1).astype(np.float32)  # ~80 distinct values
    assert len(np.unique(scores)) < 200
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auc_extremes_and_all_tied():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5


def test_auc_exact_at_large_rank_sums():
    # Rank sums here pass 2**53; float64 accumulation would drift.
    n = 3_000_000
    rng = np.random.default_rng(1)
    labels = rng.random(n) < 0.5
    scores = (rng.integers(0, 1000, n) + labels * 300).astype(np.float32)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auc_rejects_one_class():
    with pytest.raises(ValueError, match="only one class"):
        roc_auc([0.1, 0.2], [1, 1])


def test_accuracy_and_log_loss():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert accuracy(logits, labels) == 0.5
    p = torch.sigmoid(logits.double())
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean().item()
    assert log_loss(logits, labels) == pytest.approx(expected, rel=1e-12)
    m = evaluate_scores(logits, labels)
    assert set(m) == {"auc", "accuracy", "log_loss", "samples"} and m["samples"] == 4


# --- the same AUC from torch tensors (used on the GPU) -------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_tensor_auc_is_the_same_float_as_the_hosts_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(30000) < 0.25
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1 + seed % 2).astype(np.float32)
    got = roc_auc_tensor(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.float32)))
    assert got == roc_auc(scores, labels)
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_tensor_auc_extremes_ties_and_one_class():
    t = torch.tensor
    assert roc_auc_tensor(t([0.1, 0.2, 0.8, 0.9]), t([0.0, 0, 1, 1])) == 1.0
    assert roc_auc_tensor(t([0.9, 0.8, 0.2, 0.1]), t([0.0, 0, 1, 1])) == 0.0
    assert roc_auc_tensor(t([0.5] * 6), t([0.0, 1, 0, 1, 1, 0])) == 0.5
    assert roc_auc_tensor(t([-0.0, 0.0, 1.0]), t([1.0, 0.0, 1.0])) == roc_auc([-0.0, 0.0, 1.0], [1, 0, 1])
    with pytest.raises(ValueError, match="only one class"):
        roc_auc_tensor(t([0.1, 0.2]), t([1.0, 1.0]))
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc_tensor(t([0.1, 0.2]), t([1.0]))


def test_tensor_auc_keeps_rank_sums_past_2_53_exact():
    # 150M samples in three tie groups (as counts, not samples): the doubled rank sum
    # is ~1.7e16, past 2**53, where float64 sums would lose units.
    counts = torch.tensor([60_000_001, 50_000_000, 40_000_003])
    positives = torch.tensor([10_000_001, 29_999_999, 35_000_001])
    n, n_pos = int(counts.sum()), int(positives.sum())
    starts = [0, 60_000_001, 110_000_001]
    doubled = sum(p * (s + 1 + s + c) for p, s, c in zip(positives.tolist(), starts, counts.tolist(), strict=True))
    assert doubled > 2 ** 53
    expected = (doubled - n_pos * (n_pos + 1)) / (2.0 * n_pos * (n - n_pos))
    assert auc_from_groups(counts, positives) == expected
    assert auc_from_groups(counts.double(), positives.double()) != expected  # what float64 would give
    # And through the sort, on samples: the same float as the host's numpy AUC.
    rng = np.random.default_rng(2)
    labels = rng.random(3_000_000) < 0.5
    scores = (rng.integers(0, 1000, labels.size) + labels * 300).astype(np.float32)
    assert roc_auc_tensor(torch.from_numpy(scores), torch.from_numpy(labels)) == roc_auc(scores, labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch sees no GPU here")
def test_tensor_auc_on_the_gpu_equals_the_hosts():
    rng = np.random.default_rng(5)
    labels = rng.random(2_000_000) < 0.3
    scores = np.round(rng.normal(labels * 0.6, 1.0), 3).astype(np.float32)
    gpu = roc_auc_tensor(torch.from_numpy(scores).cuda(), torch.from_numpy(labels).float().cuda())
    assert gpu == roc_auc(scores, labels)
