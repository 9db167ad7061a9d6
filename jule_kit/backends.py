"""Nearest-neighbour search backends: faiss where installed, blocked torch otherwise.

faiss serves CPU tensors (and GPU tensors where faiss-gpu is installed); a blocked
matmul + top-k serves GPU machines without faiss and is the tested fallback.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

try:  # faiss is optional at import time: GPU machines may lack it
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - depends on the machine
    faiss = None

BACKEND_ENV = "JULEKIT_KNN_BACKEND"
BLOCK_ELEMENTS = 2**28


def available_backends() -> list[str]:
    return (["faiss"] if faiss is not None else []) + ["torch"]


def choose_backend(device: torch.device, backend: str = "auto") -> str:
    backend = os.environ.get(BACKEND_ENV, backend) if backend == "auto" else backend
    if backend == "auto":
        if faiss is None:
            return "torch"
        if device.type == "cuda" and not hasattr(faiss, "StandardGpuResources"):
            return "torch"  # faiss-cpu would force a round trip through host memory
        return "faiss"
    if backend == "faiss" and faiss is None:
        raise RuntimeError("the faiss backend was requested but faiss is not installed (pip install faiss-cpu)")
    return backend


def _torch_knn(x: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact squared-L2 kNN of x against itself, ``block`` queries at a time."""
    sq = (x * x).sum(1)
    dists, idxs = [], []
    for start in range(0, x.shape[0], block):
        q = x[start:start + block]
        d = sq[start:start + block, None] - 2.0 * (q @ x.T) + sq[None, :]
        d, i = torch.topk(d, k, dim=1, largest=False, sorted=True)
        dists.append(d.clamp_min_(0))
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


#: Index kinds for the neighbour search: exact, a two-level k-means tree (torch, any device),
#: faiss's inverted lists (IVF) or HNSW graph.
SEARCHES = ("exact", "kmeans_tree", "ivf", "hnsw")
TREE_LEAF_SIZE = 256  # kmeans_tree: mean points per leaf when nlist is not given
# lists visited when nprobe is not given: a tree leaf's queries share their probes, so it visits more
DEFAULT_NPROBE = {"kmeans_tree": 32, "ivf": 16}
SKETCH_WIDTH = 4  # kmeans_tree: rows at least this many times wider than sketch_dim are sketched
SHORTLIST = 4  # kmeans_tree with a sketch: candidates per query (in units of k + 1) scored exactly
POOL_GROUP = 128  # kmeans_tree with a sketch: queries whose shortlists are pooled into one exact product


@dataclass(frozen=True)
class Search:
    """How to find the neighbours: ``exact`` (every pair), a k-means tree, or an approximate faiss index.

    ``kmeans_tree``: the points are split into ``nlist`` leaves (None: N/256) by a two-level k-means
    (√nlist cells, each cut into leaves in proportion to its size, every k-means trained on at most
    ``train_per_list`` points a centroid); each leaf's points take their neighbours among the points
    of the ``nprobe`` leaves (None: 32) whose centroids are nearest its own, one matrix product per
    leaf. Rows at least 4·``sketch_dim`` wide (pixels) are first scored in a ``sketch_dim``-d PCA
    sketch (fitted on 8,192 seeded rows); each query's 4·(k+1) best there, pooled over 128 queries of
    the leaf that lie close along the sketch's leading axis, are then scored exactly (on MNIST pixels
    the same recall at 2.4× the speed; None: always exact).
    At a fixed leaf size that scan, most of the work, is linear in N (the k-means levels grow as
    N·√nlist, the probe lists as nlist², both small). It runs in torch on the CPU or a GPU, bit for
    bit the same from run to run on one machine.
    ``ivf``: IndexIVFFlat, ``nlist`` lists (None: 4·√N) trained by k-means on at most
    ``train_per_list``·nlist points (faiss's own seed), ``nprobe`` lists (None: 16) visited per query.
    ``hnsw``: IndexHNSWFlat with ``hnsw_m`` links per node and ``ef_search`` candidates per query;
    built on one thread while PyTorch's deterministic mode is on (a parallel build inserts points
    in a thread-dependent order, so its graph, and the neighbours, would vary from run to run).
    Both search on the CPU; with the torch backend (GPU machines without faiss) the search is exact.
    """

    kind: str = "exact"
    nlist: int | None = None
    nprobe: int | None = None
    train_per_list: int = 64
    hnsw_m: int = 32
    ef_search: int = 128
    sketch_dim: int | None = 64

    def __post_init__(self) -> None:
        if self.kind not in SEARCHES:
            raise ValueError(f"knn must be one of {', '.join(SEARCHES)}, got {self.kind!r}")
        for name in ("train_per_list", "hnsw_m", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nprobe", "nlist", "sketch_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def sketches(self, dim: int) -> bool:
        """Whether a kmeans_tree search of ``dim``-wide rows shortlists candidates in a PCA sketch."""
        return self.kind == "kmeans_tree" and bool(self.sketch_dim) and dim >= SKETCH_WIDTH * self.sketch_dim

    @property
    def probes(self) -> int:
        """Lists visited: ``nprobe``, or the kind's default."""
        return self.nprobe or DEFAULT_NPROBE.get(self.kind, 16)


EXACT = Search()


def knn(x: torch.Tensor, k: int, backend: str = "auto", block: int = 4096,
        search: Search = EXACT) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of ``x`` among the other rows.

    Returns ``(dist2, indices)``, both (N, k): squared L2 distances in ascending order,
    the query itself excluded (also when it has exact duplicates). ``search`` chooses an
    exact or an approximate index (see :class:`Search`).
    """
    n = x.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    x = x.detach().float().contiguous()
    kq = k + 1
    name = choose_backend(x.device, backend)
    if search.kind == "kmeans_tree":
        d_t, i_t = _tree_search(x, kq, search)
        d, i = d_t.cpu().numpy(), i_t.cpu().numpy()
    elif name == "faiss" and search.kind != "exact":
        d, i = _faiss_index_search(x.cpu().numpy(), kq, search)
    elif name == "faiss":
        xs = x.detach().cpu().numpy() if x.device.type == "cpu" or not hasattr(faiss, "StandardGpuResources") else x
        if isinstance(xs, np.ndarray):
            d, i = faiss.knn(xs, xs, kq, metric=faiss.METRIC_L2)
        else:  # faiss-gpu on torch tensors
            importlib.import_module("faiss.contrib.torch_utils")  # lets faiss take torch tensors
            res = faiss.StandardGpuResources()
            d, i = faiss.knn_gpu(res, xs, xs, kq)
            d, i = d.cpu().numpy(), i.cpu().numpy()
        d = np.maximum(d, 0)
    else:
        # cap each block's (block × N) distance matrix at BLOCK_ELEMENTS floats: 1 GiB whatever N (1M rows: 268)
        d_t, i_t = _torch_knn(x, kq, max(1, min(block, BLOCK_ELEMENTS // n)))
        d, i = d_t.cpu().numpy(), i_t.cpu().numpy()
    return _drop_self(d.astype(np.float32), i.astype(np.int64), k)


def default_nlist(n: int) -> int:
    """faiss's rule of thumb, 4·√N lists, and at least 39 training points per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def _faiss_index_search(xs: np.ndarray, kq: int, search: Search) -> tuple[np.ndarray, np.ndarray]:
    """Approximate self-search of ``xs`` with a faiss IVF or HNSW index; misses fill with the farthest found."""
    n, dim = xs.shape
    if search.kind == "ivf":
        nlist = min(search.nlist or default_nlist(n), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
        index.cp.max_points_per_centroid = search.train_per_list  # faiss samples the training set with its seed
        index.train(xs)
        index.add(xs)
        index.nprobe = min(search.probes, nlist)
        d, i = index.search(xs, kq)
    else:
        index = faiss.IndexHNSWFlat(dim, search.hnsw_m, faiss.METRIC_L2)
        threads = faiss.omp_get_max_threads()
        if torch.are_deterministic_algorithms_enabled():
            faiss.omp_set_num_threads(1)
        try:
            index.add(xs)
        finally:
            faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = max(search.ef_search, kq)
        d, i = index.search(xs, kq)
    missing = i < 0  # fewer than kq points in the lists visited: repeat the farthest one found
    if missing.any():
        last = np.maximum((~missing).sum(1) - 1, 0)
        rows = np.flatnonzero(missing.any(1))
        for r in rows:
            i[r, missing[r]] = i[r, last[r]]
            d[r, missing[r]] = d[r, last[r]]
    return np.maximum(d, 0), i


def _tree_search(x: torch.Tensor, kq: int, search: Search, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate self-search of the rows of ``x`` through a two-level k-means tree (see :class:`Search`)."""
    n = x.shape[0]
    nlist = max(1, min(search.nlist or round(n / TREE_LEAF_SIZE), n // kq))
    leaf = _tree_leaves(x, nlist, search.train_per_list, seed)
    centroids = torch.zeros(nlist, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, leaf, x)
    sizes = torch.bincount(leaf, minlength=nlist)
    centroids /= sizes.clamp_min(1)[:, None].to(x.dtype)
    order = torch.argsort(leaf, stable=True)
    starts = (torch.cumsum(sizes, 0) - sizes).tolist()
    counts = sizes.tolist()
    # each leaf's probe order: the leaves by distance of their centroids (empty ones last), blocked
    wanted = min(nlist, search.probes * 4)
    c_sq = (centroids * centroids).sum(1).masked_fill(sizes == 0, torch.inf)
    probes = torch.cat([(c_sq[None, :] - 2.0 * (centroids[s:s + 1024] @ centroids.T)).topk(
        wanted, dim=1, largest=False).indices for s in range(0, nlist, 1024)]).tolist()
    x_sq = (x * x).sum(1)
    # wide rows (pixels): shortlist each query's candidates in a PCA sketch, score only the shortlists exactly
    sketch = _pca_sketch(x, search.sketch_dim, seed) if search.sketches(x.shape[1]) else None
    if sketch is not None:
        s_sq = (sketch * sketch).sum(1)
        keep = kq * SHORTLIST
    dist = torch.empty(n, kq, dtype=x.dtype, device=x.device)
    index = torch.empty(n, kq, dtype=torch.long, device=x.device)
    for cell in range(nlist):
        if counts[cell] == 0:
            continue
        queries = order[starts[cell]:starts[cell] + counts[cell]]
        visit, found = [], 0
        for p in probes[cell]:  # the nprobe nearest leaves, more where they hold fewer than kq points
            if len(visit) >= search.probes and found >= kq:
                break
            visit.append(order[starts[p]:starts[p] + counts[p]])
            found += counts[p]
        candidates = torch.cat(visit)
        if found < kq:  # tiny leaves all around: search every point
            candidates = torch.arange(n, device=x.device)
        if sketch is None or len(candidates) <= keep:
            _score_exactly(x, x_sq, queries, candidates, kq, dist, index)
            continue
        # a query's order does not need its own norm: |c|² − 2 q·c, one fused product
        sketched = sketch[queries]
        scores = torch.addmm(s_sq[candidates][None, :], sketched, sketch[candidates].T, alpha=-2.0)
        shortlists = torch.topk(scores, keep, dim=1, largest=False, sorted=False).indices
        # pool the shortlists of queries that lie close along the leading axis, POOL_GROUP at a time: their
        # shortlists overlap, so each exact product is small (a whole leaf's pool is ~8x a query's list)
        along = torch.argsort(sketched[:, -1], stable=True)
        for start in range(0, len(queries), POOL_GROUP):
            rows = along[start:start + POOL_GROUP]
            _score_exactly(x, x_sq, queries[rows], candidates[torch.unique(shortlists[rows])], kq, dist, index)
    return dist, index


def _score_exactly(x: torch.Tensor, x_sq: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, kq: int,
                   dist: torch.Tensor, index: torch.Tensor) -> None:
    """Each query's kq nearest candidates by their exact squared distances, written into dist / index."""
    scores = torch.addmm(x_sq[candidates][None, :], x[queries], x[candidates].T, alpha=-2.0)
    d, j = torch.topk(scores, kq, dim=1, largest=False, sorted=True)
    dist[queries], index[queries] = (d + x_sq[queries, None]).clamp_min_(0), candidates[j]


def _pca_sketch(x: torch.Tensor, dim: int, seed: int, sample: int = 8192) -> torch.Tensor:
    """x projected on its first ``dim`` principal axes, fitted on a seeded sample of rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.shape[0], generator=generator)[:sample].to(x.device)
    centred = x[rows] - x[rows].mean(0)
    _, axes = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues: the last columns lead
    # distances only need the axes, not the mean: (x − m)·V and x·V differ by one shift per axis
    return x @ axes[:, -dim:]


def _tree_leaves(x: torch.Tensor, nlist: int, train_per_list: int, seed: int) -> torch.Tensor:
    """The leaf of every row: k-means into √nlist cells, then each cell's rows into its share of the leaves."""
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    n_cells = max(1, min(nlist, round(math.sqrt(nlist))))
    cell = _kmeans_assign(x, n_cells, train_per_list, generator)
    leaf = torch.empty(n, dtype=torch.long, device=x.device)
    cell_sizes = torch.bincount(cell, minlength=n_cells).tolist()
    # leaves per cell in proportion to its size (largest remainders), at least one per non-empty cell
    quota = [nlist * size / n for size in cell_sizes]
    shares = [max(1, int(q)) if size else 0 for q, size in zip(quota, cell_sizes)]
    for c in sorted(range(n_cells), key=lambda c: (int(quota[c]) - quota[c], c))[:max(0, nlist - sum(shares))]:
        shares[c] += 1 if cell_sizes[c] > shares[c] else 0
    order = torch.argsort(cell, stable=True)
    start, first_leaf = 0, 0
    for c in range(n_cells):
        rows = order[start:start + cell_sizes[c]]
        start += cell_sizes[c]
        if not len(rows):
            continue
        sub = _kmeans_assign(x[rows], min(shares[c], len(rows)), train_per_list, generator)
        leaf[rows] = sub + first_leaf
        first_leaf += min(shares[c], len(rows))
    return leaf


def _kmeans_assign(x: torch.Tensor, k: int, train_per_list: int, generator: torch.Generator,
                   niter: int = 10) -> torch.Tensor:
    """The nearest of ``k`` k-means centroids, trained on a seeded sample of ``train_per_list``·k rows."""
    n = x.shape[0]
    if k <= 1:
        return torch.zeros(n, dtype=torch.long, device=x.device)
    sample = torch.randperm(n, generator=generator)[:min(n, train_per_list * k)].to(x.device)
    centroids, _ = _torch_kmeans(x[sample], x[sample[:k]], niter, 8192)
    return nearest_centroid(x, centroids, 8192)


def _drop_self(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query from its own list (or the farthest entry when ties hid it)."""
    n = i.shape[0]
    is_self = i == np.arange(n)[:, None]
    missing = ~is_self.any(1)
    is_self[missing, -1] = True
    # several self hits are impossible, but a duplicate could in principle shadow self twice
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    return d[keep].reshape(n, k), i[keep].reshape(n, k)


def _torch_kmeans(x: torch.Tensor, init: torch.Tensor, niter: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x's device; empty clusters keep their previous centroid."""
    centroids = init.clone()
    k = centroids.shape[0]
    for _ in range(niter):
        assign = nearest_centroid(x, centroids, block)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return centroids, nearest_centroid(x, centroids, block)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, block: int) -> torch.Tensor:
    c_sq = (centroids * centroids).sum(1)
    out = []
    for start in range(0, x.shape[0], block):
        q = x[start:start + block]
        out.append((c_sq[None, :] - 2.0 * (q @ centroids.T)).argmin(1))
    return torch.cat(out)


def kmeans(x: torch.Tensor, k: int, niter: int = 20, seed: int = 0, backend: str = "auto",
           block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x``: returns ``(centroids (k, D), labels (N,))``.

    Initial centroids are k distinct random rows chosen by ``seed``; faiss (no subsampling,
    splits empty clusters) where installed, otherwise Lloyd iterations in torch on x's device.
    """
    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    x = x.detach().float().contiguous()
    # both backends start from the same k distinct random rows, so they agree on the same data
    init_rows = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    name = choose_backend(x.device, backend)
    if name == "faiss":
        xs = x.cpu().numpy()
        km = faiss.Kmeans(xs.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=10**9,
                          min_points_per_centroid=1, verbose=False)
        km.train(xs, init_centroids=xs[init_rows])
        _, labels = km.index.search(xs, 1)
        return km.centroids.copy(), labels.ravel().astype(np.int64)
    init = x[torch.as_tensor(init_rows, device=x.device)]
    centroids, labels = _torch_kmeans(x, init, niter, block)
    return centroids.cpu().numpy(), labels.cpu().numpy().astype(np.int64)
