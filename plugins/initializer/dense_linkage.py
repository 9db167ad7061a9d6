"""Initializer ``dense_linkage``: classical agglomerative clustering on all pairwise distances.

The paper's AC-Link baseline is average linkage on the Euclidean distances between every pair of
images, cut at the true number of clusters. That needs the N(N−1)/2 condensed distance matrix
(scipy's ``linkage``), which the rest of julekit never builds: this plugin exists to reproduce
the baseline and refuses more than ``max_samples`` samples (70,000 images would need 19.6 GB).
With ``clusters`` as the target and ``clusterer: {eta: 1.0, merge_first_period: false}``
nothing is left to merge (see ``recipes/ac_link_*.yaml``). The graph-based average linkage
that scales is the linkage plugin ``average``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from jule_kit import hookimpl
from jule_kit.errors import JulekitError
from jule_kit.hookspecs import Graph
from jule_kit.metrics import contiguous


class DenseLinkage:
    kind = "initializer"
    name = "dense_linkage"
    summary = "Agglomerative clustering on all pairwise distances (scipy), cut at the target: the paper's AC-Link"
    settings_help = {
        "method": "average (the paper's AC-Link), single, complete or ward",
        "metric": "distance between samples: euclidean, sqeuclidean or cosine (ward needs euclidean)",
        "max_samples": "refuse more samples than this: the distance matrix takes 4·N(N−1) bytes",
    }

    def __init__(self, *, method: Literal["average", "single", "complete", "ward"] = "average",
                 metric: Literal["euclidean", "sqeuclidean", "cosine"] = "euclidean", max_samples: int = 20000) -> None:
        if method == "ward" and metric != "euclidean":
            raise ValueError("ward linkage needs metric: euclidean")
        if max_samples < 2:
            raise ValueError(f"max_samples must be at least 2, got {max_samples}")
        self.method, self.metric, self.max_samples = method, metric, max_samples

    def initial_labels(self, graph: Graph, features: torch.Tensor, n_target: int, seed: int) -> np.ndarray:
        n = features.shape[0]
        if n > self.max_samples:
            gb = 4.0 * n * (n - 1) / 1e9  # float64 condensed matrix, N(N-1)/2 entries
            size = f"{gb:.1f} GB" if gb >= 0.1 else f"{gb * 1000:.0f} MB"
            raise JulekitError(
                f"initializer.max_samples: dense_linkage builds all {n * (n - 1) // 2:,} pairwise distances of "
                f"{n} samples ({size}), above max_samples = {self.max_samples}; raise it if the memory is "
                "there, or use the kNN-graph version: initializer: path_integral, linkage: average"
            )
        x = features.detach().cpu().double().numpy()
        tree = linkage(pdist(x, metric=self.metric), method=self.method)
        return contiguous(fcluster(tree, t=n_target, criterion="maxclust"))


@hookimpl
def julekit_register_plugins(register):
    register(DenseLinkage)
