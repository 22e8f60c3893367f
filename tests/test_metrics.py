import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reference.metrics import accuracy, evaluate_scores, log_loss, roc_auc


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
