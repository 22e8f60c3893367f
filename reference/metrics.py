"""Exact evaluation metrics: ROC AUC (tie-aware), accuracy, log loss."""

from __future__ import annotations

import numpy as np
import torch


def roc_auc(scores, labels) -> float:
    """Exact ROC AUC of array-likes (numpy arrays, lists), equal to
    scikit-learn's ``roc_auc_score``: :func:`roc_auc_tensor` on the host."""
    return roc_auc_tensor(torch.as_tensor(np.asarray(scores)), torch.as_tensor(np.asarray(labels)))


def roc_auc_tensor(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact, tie-aware ROC AUC in O(n log n) (the Mann-Whitney form: tied
    scores share their average rank), on whatever device the scores are: on a
    GPU the sort of 89M scores takes milliseconds instead of 10-20 s on one
    host core, with the same float as on the host."""
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}")
    sorted_scores, order = torch.sort(scores, stable=True)
    pos_before = torch.zeros(scores.numel() + 1, dtype=torch.int64, device=scores.device)
    torch.cumsum((labels > 0.5)[order].long(), 0, out=pos_before[1:])
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = torch.cumsum(counts, 0)
    return auc_from_groups(counts, pos_before[ends] - pos_before[ends - counts])


def auc_from_groups(counts: torch.Tensor, positives: torch.Tensor) -> float:
    """AUC from the groups of equal scores in ascending order: their sizes and
    positives (int64). Ranks are doubled so every quantity is an integer, summed
    in int64 (the sums reach ~1.6e16 on the Criteo test set, past float64's
    2**53); two values are read back to the host."""
    ends = torch.cumsum(counts, 0)
    # Doubled average rank of a group spanning sorted positions [start, end) = (start + 1) + end.
    doubled = positives * (ends - counts + 1 + ends)
    doubled_rank_sum, n_pos, n = (int(v) for v in torch.stack([doubled.sum(), positives.sum(), ends[-1]]).tolist())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined when only one class is present")
    numerator = doubled_rank_sum - n_pos * (n_pos + 1)
    return numerator / (2.0 * n_pos * n_neg)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose predicted click (probability > 0.5) matches the label."""
    return ((logits > 0).float() == labels).float().mean().item()


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()).item()


def evaluate_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """The metrics, computed where the tensors are (host or GPU)."""
    return {"auc": roc_auc_tensor(logits, labels), "accuracy": accuracy(logits, labels),
            "log_loss": log_loss(logits, labels), "samples": int(labels.numel())}
