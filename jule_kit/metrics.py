"""Clustering metrics as the JULE paper computes them."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """NMI = I(Y; C) / sqrt(H(Y) H(C)), the geometric normalisation JULE reports."""
    return float(normalized_mutual_info_score(labels_true, labels_pred, average_method="geometric"))


def acc(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Clustering accuracy under the best one-to-one cluster-to-class map (Hungarian)."""
    table = contingency_matrix(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels_true))


def ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    return float(adjusted_rand_score(labels_true, labels_pred))


def evaluate(labels_true: np.ndarray | None, labels_pred: np.ndarray) -> dict[str, float]:
    """NMI, ACC and ARI against ground truth; empty when there are no labels."""
    if labels_true is None:
        return {}
    return {"nmi": nmi(labels_true, labels_pred), "acc": acc(labels_true, labels_pred), "ari": ari(labels_true, labels_pred)}


def contiguous(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..C-1 in order of first appearance of the sorted ids."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64).reshape(-1)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value); None and NaN are left out."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def pairwise_nmi(assignments: list[np.ndarray]) -> list[float]:
    """NMI between every pair of clusterings of the same samples: how much runs agree with each other."""
    return [nmi(a, b) for a, b in combinations(assignments, 2)]
