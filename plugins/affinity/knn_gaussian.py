"""Affinity ``knn_gaussian``: the paper's directed K_s-NN graph with Gaussian weights."""
from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from jule_kit import hookimpl
from jule_kit.backends import EXACT, Search, knn
from jule_kit.hookspecs import Graph


class KnnGaussian:
    kind = "affinity"
    name = "knn_gaussian"
    summary = "Directed K_s-NN graph, W_ij = exp(-|x_i - x_j|^2 / sigma^2), sigma^2 = a * mean squared kNN distance"
    settings_help = {
        "k_s": "neighbours per sample (paper: 20)",
        "a": "sigma^2 scale: sigma^2 = a * mean squared kNN distance (paper: 1)",
        "normalize": "row normalisation of features: l2 (paper), renorm (the Torch code: cap norms at 1), none",
        "backend": "kNN backend: auto (faiss where installed, torch otherwise), faiss, torch",
        "knn": "neighbour search: exact; kmeans_tree (approximate: a two-level k-means tree searched leaf "
        "by leaf, its scan linear in N, in torch on any device); ivf or hnsw (faiss's approximate indexes, "
        "CPU; the torch backend searches exactly); auto: exact below exact_below samples, kmeans_tree from there",
        "exact_below": "with knn=auto: the number of samples from which the search is approximate (kmeans_tree)",
        "nlist": "kmeans_tree: number of leaves (null: N/256); ivf: number of inverted lists (null: 4*sqrt(N))",
        "nprobe": "kmeans_tree: leaves searched for each leaf's points (null: 32); ivf: lists visited per query "
        "(null: 16); more: higher recall, slower",
        "sketch_dim": "kmeans_tree: rows at least 4x this wide (pixels) shortlist their candidates in a PCA "
        "sketch of this many dimensions before the exact scores (null: exact scores only)",
        "hnsw_m": "hnsw: links per node",
        "ef_search": "hnsw: candidates kept per query (at least k_s + 1)",
    }

    def __init__(
        self,
        *,
        k_s: int = 20,
        a: float = 1.0,
        normalize: Literal["l2", "renorm", "none"] = "l2",
        backend: Literal["auto", "faiss", "torch"] = "auto",
        knn: Literal["auto", "exact", "kmeans_tree", "ivf", "hnsw"] = "auto",
        exact_below: int = 100_000,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        sketch_dim: int | None = 64,
    ) -> None:
        if k_s < 1:
            raise ValueError(f"k_s must be >= 1, got {k_s}")
        if a <= 0:
            raise ValueError(f"a must be > 0, got {a}")
        self.k_s, self.a, self.normalize, self.backend = k_s, a, normalize, backend
        self.knn, self.exact_below = knn, exact_below
        # checks the index parameters now, so a bad value fails before any work starts
        self.approximate = {kind: Search(kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search,
                                         sketch_dim=sketch_dim)
                            for kind in ("kmeans_tree", "ivf", "hnsw")}

    def search(self, n: int) -> Search:
        """The index the graph of ``n`` samples is searched with."""
        kind = ("exact" if n < self.exact_below else "kmeans_tree") if self.knn == "auto" else self.knn
        return self.approximate.get(kind, EXACT)

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float().flatten(1)
        if self.normalize == "l2":
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.normalize == "renorm":
            return x / x.norm(dim=1, keepdim=True).clamp_min(1.0)
        return x

    def build(self, features: torch.Tensor, k: int | None = None) -> Graph:
        k = self.k_s if k is None else k
        n = features.shape[0]
        if k >= n:
            raise ValueError(f"affinity.k_s = {k} must be smaller than the number of samples ({n})")
        dist2, idx = knn(features, k, backend=self.backend, search=self.search(n))
        sigma2 = self.a * float(dist2.astype(np.float64).mean())
        if sigma2 <= 0:  # every point has exact duplicates as neighbours
            sigma2 = 1.0
        w = np.exp(-dist2.astype(np.float64) / sigma2)
        weights = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
        weights.sort_indices()
        return Graph(indices=idx, dist2=dist2, weights=weights, sigma2=sigma2)


@hookimpl
def julekit_register_plugins(register):
    register(KnnGaussian)
