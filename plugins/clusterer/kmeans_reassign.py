"""Clusterer ``kmeans_reassign``: DeepCluster's forward pass (Caron et al., ECCV 2018).

Every period clusters the whole dataset afresh:

    features → PCA with whitening (256 dims, capped at min(D, N − 1)) → L2 rows → k-means

with k pseudo-classes (default 10 × the target: over-clustering is what works on small
datasets), 20 Lloyd iterations, seeded from the period.  ``done`` is never true, so the
loop runs ``train.max_periods`` reassignments; ``finalize`` clusters the final features
with k = target through the same pipeline.

Empty clusters are handled by this module, not inside faiss (whose k-means splits them
silently), so their number can be reported (``last_stats["empty_clusters"]``):

* ``split`` (DeepCluster / faiss): an empty cluster takes the centroid of a random
  non-empty cluster (size ≥ 2, chosen with probability ∝ size − 1) with a symmetric
  perturbation of ±1/1024 on alternating coordinates; the points of that cluster are
  then shared between the two;
* ``nearest``: an empty cluster is dropped (its points already belong to the nearest
  non-empty centroid), leaving fewer than k clusters;
* ``leave``: nothing is done; an empty centroid stays where it was.

The assignment step runs in faiss (exact flat L2 search) or torch; the centroid update and
the empty-cluster policy are shared code, so both backends give the same clustering.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from jule_kit import hookimpl
from jule_kit.backends import nearest_centroid, choose_backend, faiss
from jule_kit.hookspecs import ForwardContext
from jule_kit.metrics import contiguous

SPLIT_EPS = 1.0 / 1024  # faiss Clustering.cpp's perturbation
EmptyPolicy = Literal["split", "nearest", "leave"]


# ----------------------------------------------------------------------------------------
# Pre-processing
# ----------------------------------------------------------------------------------------


def pca_whiten(x: torch.Tensor, dim: int = 256, whiten: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Project the rows of ``x`` on their top ``min(dim, D, N − 1)`` principal components.

    With ``whiten`` every component is divided by the square root of its eigenvalue
    (faiss ``PCAMatrix(eigen_power=-0.5)``); eigenvalues are floored at ``eps`` × the
    largest so that (numerically) constant directions are not blown up.
    """
    n, d = x.shape
    dim = max(1, min(dim, d, n - 1))
    xc = x.float() - x.double().mean(0, keepdim=True).float()
    if d <= n:  # eigenvectors of the D × D covariance, accumulated in float64 by blocks
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for start in range(0, n, 8192):
            block = xc[start:start + 8192].double()
            cov += block.T @ block
        evals, evecs = torch.linalg.eigh(cov / n)
        evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
        proj = (xc @ evecs.float()).double()
    else:  # more dimensions than samples: go through the N × N Gram matrix
        xd = xc.double()
        evals, u = torch.linalg.eigh(xd @ xd.T / n)
        evals, u = evals.flip(0)[:dim], u.flip(1)[:, :dim]
        proj = u * (evals.clamp_min(0) * n).sqrt()  # = xc @ (unit principal axes)
    if whiten:
        floor = max(float(evals[0]), 0.0) * eps + 1e-30
        proj = proj / evals.clamp_min(floor).sqrt()
    return proj.float()


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; all-zero rows stay zero."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def preprocess(x: torch.Tensor, pca_dim: int, whiten: bool) -> torch.Tensor:
    x = x.detach().float().flatten(1)
    if pca_dim > 0:
        x = pca_whiten(x, pca_dim, whiten)
    return l2_rows(x)


# ----------------------------------------------------------------------------------------
# k-means with an explicit empty-cluster policy
# ----------------------------------------------------------------------------------------


@dataclass
class KMeansResult:
    labels: np.ndarray  # (N,) ids in 0..k-1 ("leave": some ids may be unused); "nearest": contiguous
    centroids: np.ndarray  # (k', D) for the ids in labels
    empty_clusters: int  # clusters found empty, before the policy acted, at some assignment step
    empty_events: int  # empty clusters summed over all assignment steps (faiss's nsplit for "split")
    loss: float  # mean squared distance of the points to their centroid
    history: list[int] = field(default_factory=list)  # empty clusters at each assignment step


def _assigner(x: torch.Tensor, backend: str, block: int):
    """A function centroids → (labels, squared distances) on the chosen backend."""
    if backend == "faiss":
        xs = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)

        def assign(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32)
            index = faiss.IndexFlatL2(c.shape[1])
            index.add(c)
            d, i = index.search(xs, 1)
            return torch.as_tensor(i.ravel(), device=x.device), torch.as_tensor(d.ravel(), device=x.device)

        return assign

    sq = (x * x).sum(1)

    def assign(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = nearest_centroid(x, centroids, block)
        d = (sq - 2.0 * (x * centroids[labels]).sum(1) + (centroids[labels] ** 2).sum(1)).clamp_min(0)
        return labels, d

    return assign


def _split(centroids: torch.Tensor, counts: np.ndarray, empty: int, rng: np.random.Generator) -> int:
    """Give the empty cluster ``empty`` half of a random cluster (p ∝ size − 1); return that cluster."""
    weights = np.maximum(counts.astype(np.float64) - 1.0, 0.0)
    donor = int(rng.choice(len(counts), p=weights / weights.sum()))
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1.0
    base = centroids[donor].clone()
    centroids[empty] = base * (1.0 + SPLIT_EPS * sign)
    centroids[donor] = base * (1.0 - SPLIT_EPS * sign)
    counts[empty] = counts[donor] // 2  # assume an even split until the next assignment
    counts[donor] -= counts[empty]
    return donor


def _split_members(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, a: int, b: int) -> None:
    """Share the points of clusters a ∪ b between a and b: nearest of the two centroids,
    or an even split in index order when that leaves one side empty (exact duplicates)."""
    members = (labels == a) | (labels == b)
    idx = members.nonzero().flatten()
    d = ((x[idx, None, :] - centroids[[a, b]][None]) ** 2).sum(2)
    side = d.argmin(1)
    if bool((side == 0).all()) or bool((side == 1).all()):
        side = (torch.arange(len(idx), device=x.device) >= len(idx) // 2).long()
    labels[idx] = torch.where(side == 0, torch.as_tensor(a, device=x.device), torch.as_tensor(b, device=x.device))


def kmeans_policy(x: torch.Tensor, k: int, niter: int = 20, seed: int = 0, empty: EmptyPolicy = "split",
                  backend: str = "auto", block: int = 8192) -> KMeansResult:
    """Lloyd's k-means of the rows of ``x`` with an explicit empty-cluster policy.

    Initial centroids are k distinct rows drawn by ``seed`` (the same rows as
    ``jule_kit.backends.kmeans``).  Each of the ``niter`` iterations assigns every point
    to its nearest centroid, moves the non-empty centroids to their means and applies the
    policy to the empty ones; a final assignment gives the labels ("split" then splits any
    cluster still empty, so every one of the k labels is used).
    """
    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if empty not in ("split", "nearest", "leave"):
        raise ValueError(f"empty must be split, nearest or leave, got {empty!r}")
    x = x.detach().float().contiguous()
    name = choose_backend(x.device, backend)
    assign = _assigner(x, name, block)
    rng = np.random.default_rng([seed, 1])
    init_rows = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    centroids = x[torch.as_tensor(init_rows, device=x.device)].clone()
    alive = np.ones(k, dtype=bool)  # "nearest" drops clusters for good
    ever_empty = np.zeros(k, dtype=bool)
    history: list[int] = []

    def step() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        live = np.flatnonzero(alive)
        lab, d = assign(centroids[torch.as_tensor(live, device=x.device)])
        lab = torch.as_tensor(live, device=x.device)[lab]
        counts = torch.bincount(lab, minlength=k).cpu().numpy()
        empties = alive & (counts == 0)
        ever_empty[empties] = True
        history.append(int(empties.sum()))
        return lab, d, counts

    for _ in range(niter):
        labels, _, counts = step()
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x.double())
        filled = torch.as_tensor(counts > 0, device=x.device)
        centroids[filled] = (sums[filled] / torch.as_tensor(counts, device=x.device)[filled, None]).float()
        for c in np.flatnonzero(alive & (counts == 0)):
            if empty == "split":
                if (counts >= 2).any():
                    _split(centroids, counts, int(c), rng)
            elif empty == "nearest":
                alive[c] = False
    labels, d2, counts = step()
    if empty == "split":
        for c in np.flatnonzero(counts == 0):
            if not (counts >= 2).any():
                break
            donor = _split(centroids, counts, int(c), rng)
            _split_members(x, labels, centroids, donor, int(c))
            counts = torch.bincount(labels, minlength=k).cpu().numpy()
        d2 = ((x - centroids[labels]) ** 2).sum(1)
    out_centroids = centroids
    labels_np = labels.cpu().numpy().astype(np.int64)
    if empty == "nearest":
        used = np.flatnonzero(np.bincount(labels_np, minlength=k) > 0)
        out_centroids = centroids[torch.as_tensor(used, device=x.device)]
        labels_np = np.searchsorted(used, labels_np).astype(np.int64)
    return KMeansResult(labels=labels_np, centroids=out_centroids.cpu().numpy(),
                        empty_clusters=int(ever_empty.sum()), empty_events=int(sum(history)),
                        loss=float(d2.double().mean()), history=history)


# ----------------------------------------------------------------------------------------
# The plugin
# ----------------------------------------------------------------------------------------


class KMeansReassign:
    kind = "clusterer"
    name = "kmeans_reassign"
    summary = "DeepCluster forward pass: PCA-whitening + L2 + k-means reassignment every period, k-means k=target at the end"
    settings_help = {
        "k": "pseudo-classes per period (default: 10 × the target number of clusters; keep k ≤ N/39)",
        "niter": "Lloyd iterations per clustering (DeepCluster: 20)",
        "pca_dim": "PCA dimensions before k-means, capped at min(D, N − 1) (DeepCluster: 256); 0 = no PCA",
        "whiten": "divide each principal component by the square root of its eigenvalue (DeepCluster: yes)",
        "empty": "empty clusters: split (DeepCluster/faiss), nearest (drop them) or leave",
        "nredo": "k-means restarts per clustering, the lowest objective wins (DeepCluster: 1)",
        "final_nredo": "k-means restarts of the final k = target clustering",
        "first_features": "features of the first period: backbone (the random network, DeepCluster) or raw pixels",
        "backend": "assignment backend: auto (faiss where installed, torch otherwise), faiss, torch",
    }
    first_features: Literal["raw", "backbone"] = "backbone"  # the engine's default is "raw"

    def __init__(
        self,
        *,
        k: int | None = None,
        niter: int = 20,
        pca_dim: int = 256,
        whiten: bool = True,
        empty: EmptyPolicy = "split",
        nredo: int = 1,
        final_nredo: int = 1,
        first_features: Literal["raw", "backbone"] = "backbone",
        backend: Literal["auto", "faiss", "torch"] = "auto",
    ) -> None:
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if niter < 1:
            raise ValueError(f"niter must be >= 1, got {niter}")
        if pca_dim < 0:
            raise ValueError(f"pca_dim must be >= 0, got {pca_dim}")
        if nredo < 1 or final_nredo < 1:
            raise ValueError(f"nredo and final_nredo must be >= 1, got {nredo} and {final_nredo}")
        self.k, self.niter, self.pca_dim, self.whiten = k, niter, pca_dim, whiten
        self.empty, self.nredo, self.final_nredo = empty, nredo, final_nredo
        self.first_features, self.backend = first_features, backend
        self.last_stats: dict[str, float] = {}

    def n_pseudo(self, n_samples: int, n_target: int) -> int:
        return max(1, min(self.k if self.k is not None else 10 * n_target, n_samples))

    def cluster(self, features: torch.Tensor, k: int, seed: int, nredo: int) -> np.ndarray:
        x = preprocess(features, self.pca_dim, self.whiten)
        best: KMeansResult | None = None
        for redo in range(nredo):
            result = kmeans_policy(x, k, self.niter, seed + redo, self.empty, self.backend)
            if best is None or result.loss < best.loss:
                best = result
        self.last_stats = {"k": float(k), "empty_clusters": float(best.empty_clusters),
                           "empty_events": float(best.empty_events), "kmeans_loss": best.loss}
        return contiguous(best.labels)

    # -- the Clusterer protocol -----------------------------------------------------------
    def forward(self, features: torch.Tensor, labels: np.ndarray | None, ctx: ForwardContext) -> np.ndarray:
        return self.cluster(features, self.n_pseudo(features.shape[0], ctx.n_target), ctx.seed, self.nredo)

    def done(self, labels: np.ndarray, n_target: int) -> bool:
        return False

    def finalize(self, features: torch.Tensor, labels: np.ndarray, ctx: ForwardContext) -> np.ndarray:
        return self.cluster(features, min(ctx.n_target, features.shape[0]), ctx.seed, self.final_nredo)


@hookimpl
def julekit_register_plugins(register):
    register(KMeansReassign)
