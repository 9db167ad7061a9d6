"""Linkage ``average``: graph average linkage on the directed kNN graph, exact and sparse.

The affinity of clusters x and y is the mean edge weight between them, both directions
counted:

    A(x, y) = S(x, y) / (|x| · |y|),   S(x, y) = Σ_{u∈x, v∈y} (W_uv + W_vu).

With P the N×C membership matrix the sum table is S = Pᵀ (W + Wᵀ) P (diagonal removed):
symmetric, at most 2·N·K_s non-zeros, never C×C dense. Merging a and b into M is exact:
S(M, y) = S(a, y) + S(b, y), and only the affinities of M to its neighbours change.

This is a graph version of average linkage, not the paper's AC-Link baseline (MATLAB
``linkage(X, 'average')`` on Euclidean distances). On a kNN graph many cluster pairs have
no edge at all (A = 0); the clusterer's ``disconnected`` fallback handles the end game.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from jule_kit import hookimpl
from jule_kit.cluster_table import SparseClusterState, dict_of_rows, membership
from jule_kit.hookspecs import Graph


def average_sums(weights, labels: np.ndarray):
    """The sparse symmetric C×C table S with S[x, y] = Σ_{u∈x, v∈y} (W_uv + W_vu), diagonal removed."""
    n_clusters = int(labels.max()) + 1
    p = membership(labels, n_clusters)
    x = (p.T @ weights.tocsr() @ p).tocsr()  # x[a, b] = Σ_{u∈a, v∈b} W_uv
    s = (x + x.T).tocsr()  # exactly symmetric: a + b == b + a in floating point
    s.setdiag(0)
    s.eliminate_zeros()
    return s


class AverageState(SparseClusterState):
    """Partition plus the sum table ``s`` and the affinity table ``aff`` (both dict of dicts)."""

    def __init__(self, graph: Graph, labels: np.ndarray) -> None:
        super().__init__(labels)
        self.s: dict[int, dict[int, float]] = dict_of_rows(average_sums(graph.weights, self._labels))
        for c in self.members:
            self.s.setdefault(c, {})
        self.aff = {
            x: {y: v / (self.size[x] * self.size[y]) for y, v in row.items() if v > 0}
            for x, row in self.s.items()
        }

    def merge(self, a: int, b: int) -> tuple[int, Iterable[int]]:
        big, small = (a, b) if (self.size[a], b) >= (self.size[b], a) else (b, a)
        row_big, row_small = self.s[big], self.s.pop(small)
        row_big.pop(small, None)
        row_small.pop(big, None)
        # S(M, y) = S(big, y) + S(small, y), kept symmetric
        for y, v in row_small.items():
            row_big[y] = row_big.get(y, 0.0) + v
            sy = self.s[y]
            sy.pop(small, None)
            sy[big] = row_big[y]
        neighbours = set(row_big)
        self._absorb(big, small)
        for x in self.aff.pop(small):
            if x != big:
                self.aff[x].pop(small, None)
        self.aff[big] = {}
        size_m = self.size[big]
        for y in neighbours:
            self._set_aff(big, y, row_big[y] / (size_m * self.size[y]))
        return big, neighbours | {big}


class AverageLinkage:
    kind = "linkage"
    name = "average"
    summary = "Graph average linkage: mean edge weight W_uv + W_vu between two clusters, exact sparse updates"

    def init(self, graph: Graph, labels: np.ndarray) -> AverageState:
        return AverageState(graph, labels)


@hookimpl
def julekit_register_plugins(register):
    register(AverageLinkage)
