"""Clusterer ``agglomerative``: JULE's forward pass (greedy merges with partial unrolling).

Each period merges n_p = ceil(η · clusters at the period's start) pairs (never past the
target). The pair merged at each step is chosen by the paper's criterion: cluster i with
affinities A_1 ≥ A_2 ≥ … to its K_c nearest clusters scores

    (1 + λ) A_1 − λ/(K_c − 1) Σ_{k=2}^{K_c} A_k

and the best-scoring cluster merges with its nearest neighbour N_i[1]. K_c = 1 merges
the pair of highest affinity (plain AC-GDL).
"""
from __future__ import annotations

import heapq
import math
import time
from typing import Literal

import numpy as np
import torch

from jule_kit import hookimpl
from jule_kit.errors import JulekitError
from jule_kit.hookspecs import ForwardContext, LinkageState
from jule_kit.metrics import contiguous


def merge_score(values, k_c: int, lam: float) -> float:
    """The paper's criterion for a cluster whose affinities are ``values`` (absent = 0)."""
    if k_c == 1 or lam == 0:
        return max(values, default=-math.inf)
    top = sorted(values, reverse=True)[:k_c]  # C's sort beats heapq.nlargest's Python loop on these rows
    if not top:
        return -math.inf
    return (1.0 + lam) * top[0] - lam / (k_c - 1) * sum(top[1:])


def best_neighbour(aff) -> int:
    # highest affinity, smallest id on ties: deterministic whatever the dict order
    return min(aff.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def cluster_centroids(features: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, sizes) of contiguous ``labels``, in float64 on the CPU."""
    x = features.detach().double().cpu()
    lab = torch.as_tensor(labels)
    n_clusters = int(lab.max()) + 1
    sizes = torch.bincount(lab, minlength=n_clusters).double()
    centroids = torch.zeros(n_clusters, x.shape[1], dtype=x.dtype).index_add_(0, lab, x) / sizes[:, None]
    return centroids, sizes


def join_nearest_centroid(features: torch.Tensor, labels: np.ndarray, movers: np.ndarray) -> np.ndarray:
    """Merge each cluster in ``movers`` into the cluster (not a mover) with the nearest centroid."""
    centroids, _ = cluster_centroids(features, labels)
    n_clusters = len(centroids)
    stays = torch.ones(n_clusters, dtype=torch.bool)
    stays[torch.as_tensor(movers)] = False
    dist = torch.cdist(centroids[torch.as_tensor(movers)], centroids).masked_fill(~stays[None, :], torch.inf)
    parent = np.arange(n_clusters)
    parent[movers] = dist.argmin(1).numpy()
    return contiguous(parent[labels])


MIN_CLASS_SIZE = 3  # the outlier guard's floor: clusters of 1-2 images never count as classes


class Agglomerative:
    kind = "clusterer"
    name = "agglomerative"
    summary = "JULE forward pass: greedy merges by the K_c / λ criterion, partial unrolling with rate η"
    settings_help = {
        "eta": "unrolling rate: fraction of the period's clusters merged per period (paper: 0.9, faces 0.2)",
        "k_c": "nearest neighbour clusters in the merge criterion (paper: 5; 1 = merge the max-affinity pair)",
        "lam": "weight λ of the local-structure term (paper: 1)",
        "kc_min_clusters": "use the K_c term only while there are more clusters than this (the Torch code: 100; "
        "0: at every size, as the paper writes it)",
        "merge_first_period": "merge in the first period too (JULE: no, the first period only initialises)",
        "final": "final stage: rc (re-cluster from the initial clusters on the final features) or sf (keep the labels)",
        "disconnected": "when no two clusters are linked any more: centroid (merge the smallest cluster into the "
        "nearest centroid, as the Torch code absorbs isolated clusters) or double_k (rebuild the graph with 2 K_s, "
        "as the Caffe code)",
        "max_k_s": "largest K_s tried by disconnected: double_k",
        "absorb_isolated_above": "at the start of each period, while there are more than this many clusters per "
        "target cluster, merge every cluster with no affinity to any other into the one with the nearest centroid "
        "(the Torch code: 20); null: never",
        "final_outlier_fraction": "final stage: clusters smaller than this fraction of the mean class size N/K "
        "(and than 3 images) do not count towards the target; the last period (and, when the outliers predate it, "
        "the one before, and so on) is redone to stop at K larger clusters, and each smaller one then joins the "
        "nearest centroid (0: off, as the Torch code)",
    }

    def __init__(
        self,
        *,
        eta: float = 0.9,
        k_c: int = 5,
        lam: float = 1.0,
        kc_min_clusters: int = 100,
        merge_first_period: bool = False,
        final: Literal["rc", "sf"] = "rc",
        disconnected: Literal["centroid", "double_k"] = "centroid",
        max_k_s: int = 640,
        absorb_isolated_above: int | None = 20,
        final_outlier_fraction: float = 0.0,
    ) -> None:
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        if k_c < 1:
            raise ValueError(f"k_c must be >= 1, got {k_c}")
        self.eta, self.k_c, self.lam = eta, k_c, lam
        self.kc_min_clusters, self.merge_first_period = kc_min_clusters, merge_first_period
        self.final, self.disconnected, self.max_k_s = final, disconnected, max_k_s
        if absorb_isolated_above is not None and absorb_isolated_above < 1:
            raise ValueError(f"absorb_isolated_above must be >= 1 or null, got {absorb_isolated_above}")
        self.absorb_isolated_above = absorb_isolated_above
        if not 0 <= final_outlier_fraction < 1:
            raise ValueError(f"final_outlier_fraction must be in [0, 1), got {final_outlier_fraction}")
        self.final_outlier_fraction = final_outlier_fraction

    # -- the Clusterer protocol -----------------------------------------------------------
    def forward(self, features: torch.Tensor, labels: np.ndarray | None, ctx: ForwardContext) -> np.ndarray:
        graph = self._graph(features, ctx)
        if labels is None:
            labels = contiguous(ctx.initializer.initial_labels(graph, features, ctx.n_target, ctx.seed))
            if not self.merge_first_period:
                return labels
        return self.period(features, graph, labels, ctx)

    def _graph(self, features: torch.Tensor, ctx: ForwardContext):
        """The sample graph of a forward or final call, whose stats start with its build time."""
        started = time.time()
        graph = ctx.build_graph(features)
        self.last_stats = {"seconds_graph": time.time() - started}
        return graph

    def done(self, labels: np.ndarray, n_target: int) -> bool:
        return int(labels.max()) + 1 <= n_target

    def merges_in_period(self, n_clusters: int, target: int) -> int:
        """ceil(η · clusters) merges, never past ``target``."""
        return min(math.ceil(self.eta * n_clusters), n_clusters - target)

    def periods_left(self, labels: np.ndarray, n_target: int) -> int:
        """Periods still to come after one that produced ``labels``: the η schedule (absorbing
        isolated clusters can only shorten it). The last of them reaches the target and does not train."""
        n_clusters, periods = int(labels.max()) + 1, 0
        while n_clusters > n_target:
            n_clusters -= self.merges_in_period(n_clusters, n_target)
            periods += 1
        return periods

    def finalize(self, features: torch.Tensor, labels: np.ndarray, ctx: ForwardContext) -> np.ndarray:
        if self.final == "sf" and labels is not None and self.done(labels, ctx.n_target):
            return labels  # nothing left to merge: skip building the graph
        graph = self._graph(features, ctx)
        if self.final == "rc":
            fresh = contiguous(ctx.initializer.initial_labels(graph, features, ctx.n_target, ctx.seed))
            self.last_stats["final_initial_clusters"] = float(fresh.max() + 1)
            if fresh.max() + 1 >= ctx.n_target:
                labels = fresh
            elif labels is None or labels.max() + 1 < ctx.n_target:
                labels = np.arange(len(fresh), dtype=np.int64)  # nothing to continue from: merge up from samples
            # else the final features have collapsed below the target (e.g. a too-high learning rate):
            # re-clustering cannot reach it, so continue from the joint loop's labels, as SF does
        starts = []  # the labels each period started from, for the outlier guard's redos
        while int(labels.max()) + 1 > ctx.n_target:
            starts.append(labels)
            labels = self.period(features, graph, labels, ctx)
        if self.final_outlier_fraction > 0:
            labels = self.set_outliers_aside(features, graph, starts, labels, ctx)
        return labels

    def period(self, features: torch.Tensor, graph, labels: np.ndarray, ctx: ForwardContext,
               target: int | None = None) -> np.ndarray:
        """One period's merges: isolated clusters absorbed, then ceil(η · clusters) greedy merges
        (never below ``target``, by default the target number of clusters)."""
        labels, state = self.absorb_isolated(features, graph, labels, ctx)
        n_clusters = int(labels.max()) + 1
        steps = self.merges_in_period(n_clusters, ctx.n_target if target is None else target)
        return self.agglomerate(features, graph, labels, steps, ctx, state) if steps > 0 else labels

    def periods_to(self, features: torch.Tensor, graph, labels: np.ndarray, ctx: ForwardContext,
                   target: int) -> np.ndarray:
        """Periods of the η schedule from ``labels`` until at most ``target`` clusters remain."""
        while int(labels.max()) + 1 > target:
            labels = self.period(features, graph, labels, ctx, target=target)
        return labels

    def set_outliers_aside(self, features: torch.Tensor, graph, starts: list[np.ndarray], labels: np.ndarray,
                           ctx: ForwardContext) -> np.ndarray:
        """Redo the last periods so that they stop at K clusters of at least the outlier size, then let
        each smaller cluster join the nearest centroid.

        A handful of samples that no other sample has among its neighbours forms a cluster with
        (almost) no affinity to any other; the greedy merges never reach it, and the last merges
        join real classes instead of absorbing it. The last period is redone first; when the
        outliers were already there at its start (on MNIST-full eight clusters of 2-3 images survive
        from 116 clusters down, and 12 → 10 cannot give 10 classes), the one before is, and so on.
        The outlier size is the fraction of N/K, and never under 3 images: at N/K = 100 (LFW's faces
        and non-faces) 1 % is one image, and a 2-image cluster would still take a class's place."""
        min_size = max(self.final_outlier_fraction * len(labels) / ctx.n_target, MIN_CLASS_SIZE)
        plain = labels
        set_aside = int((np.bincount(plain) < min_size).sum())
        if set_aside == 0:
            return plain
        for back, start in enumerate(reversed(starts), 1):
            wanted = set_aside
            for _ in range(8):  # the small clusters of a redo may differ; a few tries settle it
                labels = self.periods_to(features, graph, start, ctx, ctx.n_target + wanted)
                sizes = np.bincount(labels)
                small = np.flatnonzero(sizes < min_size)
                if len(sizes) - len(small) == ctx.n_target:
                    self.last_stats["final_outliers"] = float(sizes[small].sum())
                    self.last_stats["final_outlier_redo_periods"] = float(back)
                    return join_nearest_centroid(features, labels, small)
                if len(small) == wanted:
                    break  # this start holds too few clusters to leave K larger ones: go back a period
                wanted = len(small)
        return plain  # no redo found K larger clusters: keep the plain result

    def absorb_isolated(self, features: torch.Tensor, graph, labels: np.ndarray,
                        ctx: ForwardContext) -> tuple[np.ndarray, LinkageState | None]:
        """Merge clusters that have no affinity to any other into the nearest centroid (the Torch code's
        ``affinity.lua`` step), smallest first, while more than ``absorb_isolated_above`` × target remain.

        No merge can ever reach such a cluster, so it would survive to the last steps and make the
        greedy merges join two real classes instead. Returns the labels and, when they did not change,
        the cluster table built to look (the merges start from it)."""
        if self.absorb_isolated_above is None:
            return labels, None
        n_clusters = int(labels.max()) + 1
        room = n_clusters - self.absorb_isolated_above * ctx.n_target
        if room <= 0:
            return labels, None
        state = ctx.linkage.init(graph, labels)
        isolated = np.array([c for c in state.clusters() if not any(v > 0 for v in state.affinities(c).values())],
                            dtype=np.int64)
        if len(isolated) == 0:
            return labels, state
        if len(isolated) == n_clusters:  # nothing is linked at all: the disconnected policy decides
            return labels, state
        sizes = np.bincount(labels, minlength=n_clusters)
        isolated = isolated[np.lexsort((isolated, sizes[isolated]))][:room]  # smallest first, stable on ties
        stats = self.last_stats = getattr(self, "last_stats", {})
        stats["absorbed_isolated"] = stats.get("absorbed_isolated", 0.0) + len(isolated)
        return join_nearest_centroid(features, labels, isolated), None

    # -- merging ------------------------------------------------------------------------
    def agglomerate(self, features, graph, labels: np.ndarray, steps: int, ctx: ForwardContext,
                    state: LinkageState | None = None) -> np.ndarray:
        """Perform ``steps`` merges starting from ``labels`` (``state``: their table, if already built);
        return contiguous labels."""
        state = ctx.linkage.init(graph, labels) if state is None else state
        done = 0
        while done < steps:
            done += self._merge_steps(state, steps - done, ctx, done, steps)
            if done == steps:
                break
            # no positive affinity is left between any two clusters
            if self.disconnected == "centroid":
                return self._merge_by_centroids(features, contiguous(state.labels()), steps - done)
            k = graph.k * 2  # densify the graph, as the Caffe code does
            if k > min(self.max_k_s, graph.n_samples - 1):
                raise JulekitError(
                    f"the cluster graph is disconnected at {len(list(state.clusters()))} clusters even with "
                    f"K_s = {graph.k}; lower the target number of clusters or raise clusterer.max_k_s"
                )
            graph = ctx.build_graph(features, k=k)
            state = ctx.linkage.init(graph, contiguous(state.labels()))
        return contiguous(state.labels())

    @staticmethod
    def _merge_by_centroids(features: torch.Tensor, labels: np.ndarray, steps: int) -> np.ndarray:
        """Merge the smallest cluster into the one with the nearest centroid, ``steps`` times.

        Used when no two clusters are linked by the graph any more (the Torch code absorbs
        such isolated clusters by centroid distance too); cheap, as few clusters remain.
        """
        centroids, sizes = cluster_centroids(features, labels)
        n_clusters = len(centroids)
        parent = np.arange(n_clusters)
        alive = torch.ones(n_clusters, dtype=torch.bool)
        for _ in range(steps):
            small = int(torch.where(alive, sizes, torch.inf).argmin())
            alive[small] = False
            dist = ((centroids - centroids[small]) ** 2).sum(1).masked_fill(~alive, torch.inf)
            big = int(dist.argmin())
            alive[small] = True
            centroids[big] = (centroids[big] * sizes[big] + centroids[small] * sizes[small]) / (sizes[big] + sizes[small])
            sizes[big] += sizes[small]
            alive[small] = False
            parent[parent == small] = big
        return contiguous(parent[labels])

    def _k_c(self, n_clusters: int) -> int:
        """The criterion's K_c at this many clusters: 1 (the max-affinity pair) from kc_min_clusters down."""
        return self.k_c if n_clusters > self.kc_min_clusters else 1

    def _merge_steps(self, state: LinkageState, steps: int, ctx: ForwardContext, offset: int, total: int) -> int:
        """Greedy merges with a lazily invalidated heap of cluster scores.

        A linkage state that offers ``merge_greedily`` (the compiled GDL table) runs this same loop
        itself, in compiled code, with the same choices."""
        compiled = getattr(state, "merge_greedily", None)
        if compiled is not None:
            report = None if ctx.progress is None else (lambda done: ctx.progress(offset + done, total))
            return compiled(steps, self.k_c, self.kc_min_clusters, self.lam, report)
        n_clusters = sum(1 for _ in state.clusters())
        version: dict[int, int] = {}
        heap: list[tuple[float, int, int]] = []
        k_c = self._k_c(n_clusters)
        for c in state.clusters():
            version[c] = 0
            s = merge_score(state.affinities(c).values(), k_c, self.lam)
            if s > -math.inf:
                heap.append((-s, c, 0))
        heapq.heapify(heap)
        done = 0
        report_every = max(1, total // 200)
        while done < steps and heap:
            neg, c, ver = heapq.heappop(heap)
            if version.get(c) != ver:
                continue
            partner = best_neighbour(state.affinities(c))
            merged, changed = state.merge(c, partner)
            gone = partner if merged == c else c
            version.pop(gone, None)
            n_clusters -= 1
            done += 1
            k_c = self._k_c(n_clusters)
            for x in changed:
                version[x] = version.get(x, 0) + 1
                s = merge_score(state.affinities(x).values(), k_c, self.lam)
                if s > -math.inf:
                    heapq.heappush(heap, (-s, x, version[x]))
            if ctx.progress is not None and (done % report_every == 0 or done == steps):
                ctx.progress(offset + done, total)
        return done


@hookimpl
def julekit_register_plugins(register):
    register(Agglomerative)
