"""Initializer ``kmeans``: an over-clustering (or the k-means baseline) by k-means on the features.

``n_clusters: null`` over-clusters into max(target, round(N / 4)) clusters; ``n_clusters:
target`` gives exactly the target number (with ``clusterer: {eta: 1.0}`` nothing is left to
merge: the K-means baseline of the paper's tables). ``n_init`` restarts keep the lowest
within-cluster sum of squares, as MATLAB's ``litekmeans(..., 'Replicates', 10)``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from jule_kit import hookimpl
from jule_kit.backends import kmeans
from jule_kit.hookspecs import Graph
from jule_kit.metrics import contiguous


def inertia(x: torch.Tensor, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Within-cluster sum of squared distances of the rows of ``x`` to their centroids."""
    c = torch.as_tensor(centroids, dtype=torch.float64, device=x.device)
    lab = torch.as_tensor(labels, device=x.device)
    return float(((x.double() - c[lab]) ** 2).sum())


class KMeansInit:
    kind = "initializer"
    name = "kmeans"
    summary = "k-means on the features: an over-clustering (default N/4 clusters) or exactly the target (baseline)"
    settings_help = {
        "n_clusters": "number of k-means clusters: null = max(target, round(N/4)); target = the recipe's target; "
        "or a number (at least the target)",
        "niter": "Lloyd iterations per restart",
        "n_init": "restarts with different seeds; the one with the lowest within-cluster sum of squares is kept",
        "backend": "auto (faiss where installed), faiss or torch",
    }

    def __init__(self, *, n_clusters: int | Literal["target"] | None = None, niter: int = 20, n_init: int = 1,
                 backend: Literal["auto", "faiss", "torch"] = "auto") -> None:
        if isinstance(n_clusters, int) and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, 'target' or null, got {n_clusters}")
        if niter < 1:
            raise ValueError(f"niter must be >= 1, got {niter}")
        if n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {n_init}")
        self.n_clusters, self.niter, self.n_init, self.backend = n_clusters, niter, n_init, backend

    def cluster_count(self, n_samples: int, n_target: int) -> int:
        if self.n_clusters == "target":
            k = n_target
        elif self.n_clusters is None:
            k = max(n_target, round(n_samples / 4))
        else:
            k = max(n_target, self.n_clusters)
        return min(k, n_samples)

    def initial_labels(self, graph: Graph, features: torch.Tensor, n_target: int, seed: int) -> np.ndarray:
        x = features.detach().float()
        k = self.cluster_count(int(x.shape[0]), n_target)
        best, best_cost = None, np.inf
        for r in range(self.n_init):
            run_seed = (seed + r) % 2**31  # faiss takes a 32-bit seed
            centroids, labels = kmeans(x, k, niter=self.niter, seed=run_seed, backend=self.backend)
            cost = inertia(x, centroids, labels) if self.n_init > 1 else 0.0
            if cost < best_cost:
                best, best_cost = labels, cost
        return contiguous(best)  # empty clusters dropped: ids 0..C-1


@hookimpl
def julekit_register_plugins(register):
    register(KMeansInit)
