"""Shared machinery for sparse linkage states: partition bookkeeping and row gathers.

A linkage plugin subclasses :class:`SparseClusterState` and fills ``self.aff`` (the
symmetric cluster affinity table as a dict of dicts, positive entries only) in
``__init__`` and on every merge. Nothing here is ever C×C or N×N dense.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import scipy.sparse as sp


def gather_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zeros of ``m[rows]`` as (position in ``rows``, column, value), vectorised."""
    starts = m.indptr[rows]
    counts = m.indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), counts)
    # entry e of row position p sits at starts[p] + (e - first entry of p)
    flat = np.arange(len(owner)) + (starts - (np.cumsum(counts) - counts))[owner]
    return owner, m.indices[flat], m.data[flat]


def membership(labels: np.ndarray, n_clusters: int) -> sp.csr_matrix:
    """The sparse N×C indicator matrix P of a contiguous labelling."""
    n = len(labels)
    return sp.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, n_clusters))


def dict_of_rows(m: sp.csr_matrix) -> dict[int, dict[int, float]]:
    """Rows of a sparse matrix as {row: {col: value}} (explicit zeros dropped)."""
    m = m.tocsr()
    m.eliminate_zeros()
    ind, dat, ptr = m.indices.tolist(), m.data.tolist(), m.indptr
    return {r: dict(zip(ind[ptr[r]:ptr[r + 1]], dat[ptr[r]:ptr[r + 1]])) for r in range(m.shape[0])}


class _Members(Mapping):
    """``state.members[c]``: the samples of cluster c, joined from their chunks when read."""

    def __init__(self, state: "SparseClusterState") -> None:
        self._state = state

    def __getitem__(self, cluster: int) -> np.ndarray:
        chunks = self._state._chunks[cluster]
        if len(chunks) > 1:
            chunks[:] = [np.concatenate(chunks)]
        return chunks[0]

    def __iter__(self):
        return iter(self._state._chunks)

    def __len__(self) -> int:
        return len(self._state._chunks)


class SparseClusterState:
    """Partition of the samples plus a symmetric sparse affinity table ``aff``."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels, dtype=np.int64).copy()
        order = np.argsort(self._labels, kind="stable")
        counts = np.bincount(self._labels)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        # each cluster's samples as a list of arrays, joined only when asked for: a merge then costs the
        # smaller cluster's size, not the larger's (a giant cluster would make merging quadratic)
        self._chunks: dict[int, list[np.ndarray]] = {
            c: [order[bounds[c]:bounds[c + 1]]] for c in range(len(counts)) if counts[c] > 0
        }
        self.members = _Members(self)
        self.size: dict[int, int] = {c: int(counts[c]) for c in self._chunks}
        self.aff: dict[int, dict[int, float]] = {c: {} for c in self._chunks}

    # -- the LinkageState protocol ------------------------------------------------------
    def affinities(self, cluster: int) -> Mapping[int, float]:
        return self.aff[cluster]

    def clusters(self) -> Iterable[int]:
        return self._chunks.keys()

    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._chunks)

    # -- helpers for subclasses ---------------------------------------------------------
    def _absorb(self, keep: int, gone: int) -> None:
        """Move ``gone``'s samples into ``keep`` (the caller updates the tables)."""
        moved = self._chunks.pop(gone)
        for chunk in moved:
            self._labels[chunk] = keep
        self._chunks[keep].extend(moved)
        self.size[keep] += self.size.pop(gone)

    def _set_aff(self, a: int, b: int, value: float) -> None:
        if value > 0:
            self.aff[a][b] = value
            self.aff[b][a] = value
        else:
            self.aff[a].pop(b, None)
            self.aff[b].pop(a, None)
