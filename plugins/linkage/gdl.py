"""Linkage ``gdl``: graph degree linkage (Zhang et al., ECCV 2012), exact and sparse.

For clusters x, y let B(x→y) = Σ_{m∈y} d_in(m←x) · d_out(m→x), the mass of 2-paths
x → m → x through y. The affinity is A(i, j) = B(i→j)/|i|² + B(j→i)/|j|².
With P the N×C membership matrix, S_out = W P and S_in = Wᵀ P, the whole table is
Bᵀ = Pᵀ (S_out ⊙ S_in): at most N·K_s non-zeros, never C×C dense.

On a merge of a and b into M:  B(x→M) = B(x→a) + B(x→b)  and
B(M→y) = B(a→y) + B(b→y) + X(y),  X(y) = Σ_{m∈y} d_in(m←a) d_out(m→b) + d_in(m←b) d_out(m→a).
X is computed from the smaller cluster's 2-hop neighbourhood only. ``update: fast``
drops X, as the Torch code's default does (merged clusters look less attractive until
the next period rebuilds the table).

``size_norm: middle`` divides B(x→y) by |y|², the size of the cluster the 2-paths run
through, instead of |x|² (a TensorFlow port of JULE does this): a tiny cluster then looks
close to the large cluster its members point into, so outlier clusters are absorbed early
instead of surviving to the last merges. Not the paper's GDL; offered for ablation.
"""
from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
import scipy.sparse as sp

from jule_kit import hookimpl
from jule_kit.cluster_table import SparseClusterState, dict_of_rows, gather_rows, membership
from jule_kit.hookspecs import Graph


def compiled_kernels():
    """The compiled merge loop (``gdl_compiled``, numba), imported on first use: importing numba takes
    half a second that ``julekit --help`` need not pay. None where numba is not installed (a machine
    installed with --no-deps): the Python code below then runs, with the same labels."""
    try:
        from . import gdl_compiled
    except ImportError:
        return None
    return gdl_compiled


def gdl_tables(weights: sp.csr_matrix, labels: np.ndarray) -> sp.csr_matrix:
    """The sparse C×C matrix B with B[x, y] = B(x→y) (diagonal removed)."""
    n_clusters = int(labels.max()) + 1
    p = membership(labels, n_clusters)
    s_out = (weights @ p).tocsr()  # d_out(m→x)
    s_in = (weights.T @ p).tocsr()  # d_in(m←x)
    b_t = (p.T @ s_out.multiply(s_in)).tocsr()  # [y, x] = B(x→y)
    b = b_t.T.tocsr()
    b.setdiag(0)
    b.eliminate_zeros()
    return b


def initial_tables(graph: Graph, labels: np.ndarray, middle: bool
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """What a GDL state starts from: the stacked [Wᵀ; W] (rows 0..N-1 a sample's in-edges, rows N..2N-1
    its out-edges, so that one gather serves both directions), B, and the symmetric affinity table."""
    w = graph.weights.tocsr()
    in_out = sp.vstack([w.T.tocsr(), w], format="csr")
    b = gdl_tables(w, labels)
    sizes = np.bincount(labels, minlength=b.shape[0]).astype(np.float64)
    q = b @ sp.diags(1.0 / sizes**2) if middle else sp.diags(1.0 / sizes**2) @ b  # B(i→j)/|j|² or /|i|²
    return in_out, b, (q + q.T).tocsr()


class GDLState(SparseClusterState):
    def __init__(self, graph: Graph, labels: np.ndarray, exact: bool, middle: bool = False) -> None:
        super().__init__(labels)
        self.middle, self.exact = middle, exact
        self.n = graph.n_samples
        self.w_in_out, b, aff = initial_tables(graph, self._labels, middle)
        self.b: dict[int, dict[int, float]] = dict_of_rows(b)
        self.aff = dict_of_rows(aff)

    def _cross_terms(self, big: int, small: int) -> dict[int, float]:
        """X(y) for every cluster y other than the two being merged."""
        lab, n = self._labels, self.n
        mem = self.members[small]
        # key u < N: an in-neighbour u of small with d_out(u→small); key N + v: an out-neighbour v with d_in(v←small)
        owner, keys, w = gather_rows(self.w_in_out, np.concatenate([mem, mem + n]))
        keys, inv = np.unique(keys + n * (owner >= len(mem)), return_inverse=True)
        deg_small = np.bincount(inv, weights=w, minlength=len(keys))
        # the same samples' degree towards big, read off the other direction: d_in(u←big), d_out(v→big);
        # row ``key`` of the stacked matrix is exactly that direction of that sample
        o, cols, w = gather_rows(self.w_in_out, keys)
        keep = lab[cols] == big
        deg_big = np.bincount(o[keep], weights=w[keep], minlength=len(keys))
        vals = deg_small * deg_big
        target = lab[keys - n * (keys >= n)]
        keep = (vals > 0) & (target != big) & (target != small)
        if not keep.any():
            return {}
        ys, inv = np.unique(target[keep], return_inverse=True)
        sums = np.bincount(inv, weights=vals[keep])
        return dict(zip(ys.tolist(), sums.tolist()))

    def merge(self, a: int, b: int) -> tuple[int, Iterable[int]]:
        big, small = (a, b) if (self.size[a], b) >= (self.size[b], a) else (b, a)
        cross = self._cross_terms(big, small) if self.exact else {}
        neighbours = (self.aff[big].keys() | self.aff[small].keys() | cross.keys()) - {big, small}
        # B(M→y) = B(big→y) + B(small→y) + X(y), accumulated into the larger row
        row = self.b[big]
        row.pop(small, None)
        for y, v in self.b.pop(small).items():
            if y != big:
                row[y] = row.get(y, 0.0) + v
        for y, v in cross.items():
            row[y] = row.get(y, 0.0) + v
        # B(x→M) = B(x→big) + B(x→small)
        for x in neighbours:
            bx = self.b[x]
            v = bx.pop(small, 0.0) + bx.get(big, 0.0)
            if v > 0:
                bx[big] = v
        self._absorb(big, small)
        for x in self.aff.pop(small):
            if x != big:
                self.aff[x].pop(small, None)
        self.aff[big] = {}
        inv_m = 1.0 / self.size[big] ** 2
        for y in neighbours:
            inv_y = 1.0 / self.size[y] ** 2
            if self.middle:  # B(M→y)/|y|² + B(y→M)/|M|²
                self._set_aff(big, y, row.get(y, 0.0) * inv_y + self.b[y].get(big, 0.0) * inv_m)
            else:  # B(M→y)/|M|² + B(y→M)/|y|²
                self._set_aff(big, y, row.get(y, 0.0) * inv_m + self.b[y].get(big, 0.0) * inv_y)
        return big, neighbours | {big}


class CompiledGDLState:
    """``GDLState`` held in numba's typed containers: the whole greedy loop (``merge_greedily``) runs
    compiled, with the same arithmetic in the same order, so the labels are bit for bit the Python
    state's. The LinkageState methods read the same containers."""

    def __init__(self, graph: Graph, labels: np.ndarray, exact: bool, middle: bool = False) -> None:
        labels = np.asarray(labels, dtype=np.int64).copy()
        self.n = graph.n_samples
        self.exact, self.middle = exact, middle
        in_out, b, aff = initial_tables(graph, labels, middle)
        self._in_out = (in_out.indptr.astype(np.int64), in_out.indices.astype(np.int64),
                        in_out.data.astype(np.float64))
        n_clusters = b.shape[0]
        counts = np.bincount(labels, minlength=n_clusters)
        kernels = self._kernels = compiled_kernels()
        self._b, self._aff = (kernels.rows_from_csr(m.indptr.astype(np.int64), m.indices.astype(np.int64),
                                                    m.data.astype(np.float64), n_clusters) for m in (b, aff))
        self._labels = labels
        self._head, self._tail, self._next = kernels.member_lists(labels, n_clusters)
        self._size = counts.astype(np.int64)
        self._alive = counts > 0
        # zeroed scratch space of the cross terms: a degree per sample and direction, a sum per cluster
        self._scratch = (np.zeros(2 * self.n), np.zeros(n_clusters))

    def _tables(self) -> tuple:
        return (self._b, self._aff, self._labels, self._head, self._tail, self._next, self._size, self._alive,
                *self._in_out, self.n, self.exact, self.middle, *self._scratch)

    @property
    def b(self):
        """``b[x][y]`` = B(x→y), as ``GDLState.b``."""
        return self._b

    @property
    def size(self) -> np.ndarray:
        """``size[c]``: the number of samples in cluster c (0 once merged away)."""
        return self._size

    # -- the LinkageState protocol ------------------------------------------------------
    def affinities(self, cluster: int):
        return self._aff[cluster]

    def clusters(self) -> list[int]:
        return np.flatnonzero(self._alive).tolist()

    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return int(self._alive.sum())

    def merge(self, a: int, b: int) -> tuple[int, Iterable[int]]:
        merged, changed = self._kernels.merge_pair(a, b, *self._tables())
        return int(merged), set(changed.tolist())

    def merge_greedily(self, steps: int, k_c: int, kc_min_clusters: int, lam: float, progress=None) -> int:
        """Up to ``steps`` merges by the clusterer's criterion, compiled (``Agglomerative._merge_steps``
        in numba); ``progress(done)`` is called about 200 times. Returns the merges done."""
        n_clusters = len(self)
        k_start = k_c if n_clusters > kc_min_clusters else 1
        heap = self._kernels.start_heap(self._aff, self._alive, k_start, lam)
        version = np.where(self._alive, 0, -1).astype(np.int64)
        chunk, done = max(1, steps // 200), 0
        while done < steps:
            did, n_clusters = self._kernels.greedy_merges(min(chunk, steps - done), heap, version, n_clusters, k_c,
                                                          kc_min_clusters, lam, *self._tables())
            done += did
            if progress is not None:
                progress(done)
            if did == 0 or len(heap) == 0:
                break
        return done


class GDL:
    kind = "linkage"
    name = "gdl"
    summary = "Graph degree linkage on the sparse kNN graph, exact local updates (no N×N or C×C matrix)"
    settings_help = {
        "update": "exact (default), or fast: drop the cross term on merges as the Torch code does",
        "size_norm": "source: B(i→j)/|C_i|² (the paper's GDL); middle: B(i→j)/|C_j|², the size of the cluster "
        "the paths run through (a TensorFlow port of JULE)",
        "compiled": "true (default): the merge loop compiled with numba where it is installed; false: the Python "
        "loop (the same labels, bit for bit)",
    }

    def __init__(self, *, update: Literal["exact", "fast"] = "exact",
                 size_norm: Literal["source", "middle"] = "source", compiled: bool = True) -> None:
        self.update, self.size_norm, self.compiled = update, size_norm, compiled

    def init(self, graph: Graph, labels: np.ndarray) -> GDLState | CompiledGDLState:
        state = CompiledGDLState if self.compiled and compiled_kernels() is not None else GDLState
        return state(graph, labels, exact=self.update == "exact", middle=self.size_norm == "middle")


@hookimpl
def julekit_register_plugins(register):
    register(GDL)
