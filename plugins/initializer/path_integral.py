"""Initializers ``path_integral`` (the paper's initial clusters) and ``singletons``."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from jule_kit import hookimpl
from jule_kit.hookspecs import Graph


def nearest_neighbour_chains(nearest: np.ndarray, max_chain: int | None = None) -> np.ndarray:
    """Clusters of the 1-NN digraph: every sample joins the cluster of its nearest neighbour.

    Without a cap this is the weakly connected components of i -> nearest[i] (AC-PIC's
    ``gacNNMerge`` and JULE's chain following give the same partition). ``max_chain``
    reproduces the Torch code's cut of chains after that many samples.
    """
    n = len(nearest)
    if max_chain is None:
        graph = sp.csr_matrix((np.ones(n), (np.arange(n), nearest)), shape=(n, n))
        return connected_components(graph, directed=True, connection="weak")[1].astype(np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    n_clusters = 0
    for start in range(n):  # the Torch algorithm, sample by sample
        if labels[start] >= 0:
            continue
        chain, on_chain, node = [start], {start}, start
        while True:
            node = int(nearest[node])
            if labels[node] >= 0:
                labels[chain] = labels[node]
                break
            if node in on_chain or len(chain) > max_chain:
                if node not in on_chain:  # the Torch code labels the sample where the cut happens too
                    chain.append(node)
                labels[chain] = n_clusters
                n_clusters += 1
                break
            chain.append(node)
            on_chain.add(node)
    return labels


class PathIntegralInit:
    kind = "initializer"
    name = "path_integral"
    summary = "Initial clusters of AC-PIC / JULE: connected components of the 1-nearest-neighbour graph"
    settings_help = {"max_chain": "cut nearest-neighbour chains after this many samples (the Torch code: 50); null = no cut"}

    def __init__(self, *, max_chain: int | None = None) -> None:
        self.max_chain = max_chain

    def initial_labels(self, graph: Graph, features: torch.Tensor, n_target: int, seed: int) -> np.ndarray:
        return nearest_neighbour_chains(graph.indices[:, 0], self.max_chain)


class Singletons:
    kind = "initializer"
    name = "singletons"
    summary = "Every sample starts as its own cluster"

    def initial_labels(self, graph: Graph, features: torch.Tensor, n_target: int, seed: int) -> np.ndarray:
        return np.arange(graph.n_samples, dtype=np.int64)


@hookimpl
def julekit_register_plugins(register):
    register(PathIntegralInit)
    register(Singletons)
