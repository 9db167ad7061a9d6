"""A third-party julekit plugin: single linkage on the sample graph.

The affinity of two clusters is their strongest edge, max over u∈a, v∈b of
max(W_uv, W_vu); merging a and b gives A(M, y) = max(A(a, y), A(b, y)).
"""
from __future__ import annotations

import numpy as np

from jule_kit import hookimpl
from jule_kit.cluster_table import SparseClusterState


class SingleLinkState(SparseClusterState):
    def __init__(self, graph, labels):
        super().__init__(labels)
        w = graph.weights.maximum(graph.weights.T).tocoo()
        a, b = self._labels[w.row], self._labels[w.col]
        keep = a != b
        # strongest edge per cluster pair: sort by weight so the last write wins
        order = np.argsort(w.data[keep], kind="stable")
        table: dict[int, dict[int, float]] = {c: {} for c in self.members}
        for i, j, v in zip(a[keep][order].tolist(), b[keep][order].tolist(), w.data[keep][order].tolist()):
            table[i][j] = v
        self.aff = table

    def merge(self, a, b):
        keep, gone = (a, b) if self.size[a] >= self.size[b] else (b, a)
        neighbours = (self.aff[keep].keys() | self.aff[gone].keys()) - {keep, gone}
        values = {y: max(self.aff[keep].get(y, 0.0), self.aff[gone].get(y, 0.0)) for y in neighbours}
        self._absorb(keep, gone)
        for y in self.aff.pop(gone):
            if y != keep:
                self.aff[y].pop(gone, None)
        self.aff[keep] = {}
        for y, v in values.items():
            self._set_aff(keep, y, v)
        return keep, neighbours | {keep}


class SingleLink:
    kind = "linkage"
    name = "single_link"
    summary = "Single linkage on the kNN graph (example third-party plugin)"

    def init(self, graph, labels):
        return SingleLinkState(graph, labels)


@hookimpl
def julekit_register_plugins(register):
    register(SingleLink)
