"""The agglomerative clusterer: merge criterion, partial unrolling, the paper's AC-GDL on COIL-20."""
from __future__ import annotations

import os
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit.errors import JulekitError
from jule_kit.hookspecs import ForwardContext
from jule_kit.metrics import nmi
from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian
from jule_kit.plugins.clusterer.agglomerative import Agglomerative, best_neighbour, merge_score
from jule_kit.plugins.initializer.path_integral import PathIntegralInit
from jule_kit.plugins.linkage.gdl import GDL

# the benchmark datasets: $JULEKIT_DATA, else ../shared/datasets next to the repository
DATA = Path(os.environ.get("JULEKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
COIL20 = DATA / "coil20.npz"


def make_ctx(aff: KnnGaussian, n_target: int, calls: list | None = None, cache: dict | None = None) -> ForwardContext:
    """``cache`` reuses graphs of the same features (the COIL-20 graph takes a while on 2 cores)."""

    def build_graph(f, k=None):
        if calls is not None:
            calls.append(k)
        if cache is None:
            return aff.build(f, k)
        key = (id(f), k)
        if key not in cache:
            cache[key] = aff.build(f, k)
        return cache[key]

    return ForwardContext(period=1, n_target=n_target, seed=0, build_graph=build_graph,
                          initializer=PathIntegralInit(), linkage=GDL())


# ----------------------------------------------------------------------------------------
# the merge criterion
# ----------------------------------------------------------------------------------------


def test_merge_score_hand_values():
    values = [0.1, 0.5, 0.01, 0.3, 0.05, 0.2]  # any order
    # K_c = 5, λ = 1: top five 0.5, 0.3, 0.2, 0.1, 0.05 → 2·0.5 − (0.3+0.2+0.1+0.05)/4
    assert merge_score(values, 5, 1.0) == pytest.approx(1.0 - 0.65 / 4)
    # λ = 0.5: 1.5·0.5 − 0.5/4 · 0.65
    assert merge_score(values, 5, 0.5) == pytest.approx(0.75 - 0.125 * 0.65)
    # K_c = 3, λ = 2: 3·0.5 − 2/2 · (0.3 + 0.2)
    assert merge_score(values, 3, 2.0) == pytest.approx(1.0)
    # K_c = 2, λ = 1: 2·0.5 − 0.3
    assert merge_score(values, 2, 1.0) == pytest.approx(0.7)


def test_merge_score_fewer_neighbours_than_kc():
    # absent neighbours count as affinity 0: 2·0.4 − (0.2 + 0 + 0 + 0)/4
    assert merge_score([0.4, 0.2], 5, 1.0) == pytest.approx(0.75)
    # a single neighbour: (1 + λ) A1
    assert merge_score([0.4], 5, 1.0) == pytest.approx(0.8)
    assert merge_score([0.4], 5, 3.0) == pytest.approx(1.6)


def test_merge_score_kc_one_is_max_affinity():
    assert merge_score([0.4, 0.2, 0.35], 1, 1.0) == pytest.approx(0.4)
    assert merge_score([0.4, 0.2, 0.35], 1, 7.0) == pytest.approx(0.4)
    assert merge_score([0.4, 0.2], 5, 0.0) == pytest.approx(0.4)  # λ = 0: the plain maximum
    assert merge_score([], 5, 1.0) == -math.inf
    assert merge_score(iter({3: 0.25, 4: 0.5}.values()), 1, 1.0) == pytest.approx(0.5)


def test_best_neighbour_breaks_ties_by_smallest_id():
    assert best_neighbour({5: 0.3, 2: 0.7, 9: 0.1}) == 2
    assert best_neighbour({8: 0.5, 3: 0.5, 4: 0.2}) == 3


class TableState:
    """A LinkageState over a fixed symmetric table (merged rows: element-wise max)."""

    def __init__(self, table: dict[tuple[int, int], float], n: int) -> None:
        self.aff = {c: {} for c in range(n)}
        for (i, j), v in table.items():
            self.aff[i][j] = v
            self.aff[j][i] = v
        self._labels = np.arange(n)
        self.merges: list[tuple[int, int]] = []

    def affinities(self, c):
        return self.aff[c]

    def clusters(self):
        return self.aff.keys()

    def labels(self):
        return self._labels

    def merge(self, a, b):
        self.merges.append(tuple(sorted((a, b))))
        keep, gone = min(a, b), max(a, b)
        row = self.aff.pop(gone)
        for x in row:
            if x != keep:
                self.aff[x].pop(gone, None)
                v = max(row[x], self.aff[keep].get(x, 0.0))
                self.aff[keep][x] = self.aff[x][keep] = v
        self.aff[keep].pop(gone, None)
        self._labels[self._labels == gone] = keep
        return keep, set(self.aff[keep]) | {keep}


class TableLinkage:
    def __init__(self, table, n):
        self.table, self.n, self.states = table, n, []

    def init(self, graph, labels):
        self.states.append(TableState(self.table, self.n))
        return self.states[-1]


# a clique 0-1-2-3 holding the strongest pair (0,1), and an isolated pair (4,5)
CLIQUE_AND_PAIR = {(0, 1): 0.9, (0, 2): 0.85, (0, 3): 0.8, (1, 2): 0.85, (1, 3): 0.8, (2, 3): 0.8, (4, 5): 0.7}


@pytest.mark.parametrize("k_c,kc_min,want", [
    (1, 0, (0, 1)),  # plain AC-GDL: the max-affinity pair
    (3, 0, (4, 5)),  # criterion: 0 scores 2·0.9 − (0.85+0.8)/2 = 0.975 < 4's 2·0.7 = 1.4
    (3, 10, (0, 1)),  # the K_c term is off while there are at most kc_min_clusters clusters
])
def test_one_step_follows_the_criterion(k_c, kc_min, want):
    linkage = TableLinkage(CLIQUE_AND_PAIR, 6)
    ctx = ForwardContext(period=1, n_target=1, seed=0, build_graph=None, initializer=None, linkage=linkage)
    clus = Agglomerative(k_c=k_c, lam=1.0, kc_min_clusters=kc_min)
    labels = clus.agglomerate(None, None, np.arange(6), 1, ctx)
    assert linkage.states[0].merges == [want]
    assert labels.max() + 1 == 5


def test_progress_is_reported():
    linkage = TableLinkage(CLIQUE_AND_PAIR, 6)
    seen = []
    ctx = ForwardContext(period=1, n_target=1, seed=0, build_graph=None, initializer=None, linkage=linkage,
                         progress=lambda done, total: seen.append((done, total)))
    Agglomerative(k_c=1).agglomerate(None, None, np.arange(6), 3, ctx)
    assert seen[-1] == (3, 3)
    assert len(linkage.states[0].merges) == 3


# ----------------------------------------------------------------------------------------
# COIL-20: the paper's AC-GDL figure
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coil20():
    if not COIL20.exists():  # pragma: no cover - depends on the machine
        pytest.fail(f"{COIL20} not found: set JULEKIT_DATA to the folder holding the benchmark datasets")
    d = np.load(COIL20)
    x = torch.from_numpy(d["images"].reshape(len(d["images"]), -1).astype(np.float32) / 255.0)
    aff = KnnGaussian(k_s=20, normalize="none")
    f = aff.prepare(x)
    cache = {(id(f), None): aff.build(f)}
    return f, d["labels"], aff, cache


@pytest.mark.slow
def test_ac_gdl_on_coil20(coil20):
    f, y, aff, cache = coil20
    clus = Agglomerative(eta=1.0, k_c=1, merge_first_period=True)
    labels = clus.forward(f, None, make_ctx(aff, 20, cache=cache))
    assert labels.dtype == np.int64 and labels.shape == (1440,)
    assert set(labels.tolist()) == set(range(20))
    assert clus.done(labels, 20)
    score = nmi(y, labels)
    assert score >= 0.93, score


@pytest.mark.slow
def test_partial_unrolling_on_coil20(coil20):
    f, y, aff, cache = coil20
    ctx = make_ctx(aff, 20, cache=cache)
    clus = Agglomerative(eta=0.5, k_c=5)
    labels = clus.forward(f, None, ctx)  # first period: the initial clusters only
    initial = PathIntegralInit().initial_labels(cache[(id(f), None)], f, 20, 0)
    assert labels.max() + 1 == initial.max() + 1 == 424
    counts = [int(labels.max()) + 1]
    assert clus.periods_left(labels, 20) == 5  # the schedule the progress bars' ETA counts on
    while not clus.done(labels, 20):
        assert clus.periods_left(labels, 20) == 6 - len(counts)
        c = int(labels.max()) + 1
        new = clus.forward(f, labels, ctx)
        want = max(c - math.ceil(0.5 * c), 20)
        assert new.max() + 1 == want
        assert set(new.tolist()) == set(range(want))  # contiguous
        # merges only: every old cluster lies inside one new cluster
        assert len(set(zip(labels.tolist(), new.tolist()))) == c
        labels = new
        counts.append(want)
    assert counts == [424, 212, 106, 53, 26, 20]
    assert clus.periods_left(labels, 20) == 0
    assert nmi(y, labels) > 0.9


@pytest.mark.slow
def test_forward_is_deterministic(coil20):
    f, y, aff, cache = coil20
    clus = Agglomerative(eta=0.5, k_c=5)
    start = PathIntegralInit().initial_labels(cache[(id(f), None)], f, 20, 0)
    # no graph cache: the graph is rebuilt from the features on each call
    a = clus.forward(f, start.copy(), make_ctx(aff, 20))
    b = Agglomerative(eta=0.5, k_c=5).forward(f, start.copy(), make_ctx(aff, 20))
    np.testing.assert_array_equal(a, b)
    assert a.max() + 1 == 212


@pytest.mark.slow
def test_finalize_sf_reaches_target(coil20):
    f, y, aff, cache = coil20
    start = PathIntegralInit().initial_labels(cache[(id(f), None)], f, 20, 0)
    clus = Agglomerative(eta=0.9, k_c=5, final="sf")
    labels = clus.finalize(f, start, make_ctx(aff, 20, cache=cache))
    assert labels.max() + 1 == 20


# ----------------------------------------------------------------------------------------
# a disconnected sample graph
# ----------------------------------------------------------------------------------------


def two_blobs() -> torch.Tensor:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 100.0])
    return torch.from_numpy(x.astype(np.float32))


def test_disconnected_graph_is_densified():
    x = two_blobs()
    aff = KnnGaussian(k_s=3, normalize="none")
    assert aff.build(x).weights[:30, 30:].nnz == 0  # no edge between the blobs at K_s = 3
    calls: list = []
    clusterer = Agglomerative(eta=1.0, k_c=1, merge_first_period=True, disconnected="double_k")
    labels = clusterer.forward(x, None, make_ctx(aff, 1, calls))
    assert labels.max() == 0 and np.all(labels == 0)
    ks = [k for k in calls if k is not None]
    assert ks, "the graph was never rebuilt with more neighbours"
    assert ks == [3 * 2 ** (i + 1) for i in range(len(ks))]  # K_s doubles each time
    assert ks[-1] >= 30  # only then can the blobs connect


def test_disconnected_graph_two_targets_needs_no_densifying():
    x = two_blobs()
    aff = KnnGaussian(k_s=5, normalize="none")
    calls: list = []
    labels = Agglomerative(eta=1.0, k_c=1, merge_first_period=True).forward(x, None, make_ctx(aff, 2, calls))
    assert labels.max() + 1 == 2
    assert len(set(labels[:30].tolist())) == 1 and len(set(labels[30:].tolist())) == 1


def test_disconnected_graph_beyond_max_k_s_raises():
    x = two_blobs()
    aff = KnnGaussian(k_s=3, normalize="none")
    with pytest.raises(JulekitError, match="disconnected"):
        Agglomerative(eta=1.0, k_c=1, merge_first_period=True, disconnected="double_k",
                      max_k_s=12).forward(x, None, make_ctx(aff, 1))


def test_disconnected_clusters_merge_by_nearest_centroid():
    rng = np.random.default_rng(1)
    blobs = [rng.normal(size=(30, 2)) + offset for offset in (0.0, 12.0, 100.0)]
    x = torch.from_numpy(np.concatenate(blobs).astype(np.float32))
    aff = KnnGaussian(k_s=3, normalize="none")
    calls: list = []
    labels = Agglomerative(eta=1.0, k_c=1, merge_first_period=True).forward(x, None, make_ctx(aff, 2, calls))
    assert [k for k in calls if k is not None] == []  # no graph rebuilt
    assert labels.max() + 1 == 2
    assert len(set(labels[:60].tolist())) == 1 and len(set(labels[60:].tolist())) == 1
    assert labels[0] != labels[-1]


def test_first_period_without_merging_returns_initial_clusters():
    x = two_blobs()
    aff = KnnGaussian(k_s=3, normalize="none")
    labels = Agglomerative(eta=1.0).forward(x, None, make_ctx(aff, 1))
    want = PathIntegralInit().initial_labels(aff.build(x), x, 1, 0)
    assert len(set(zip(labels.tolist(), want.tolist()))) == want.max() + 1 == labels.max() + 1


def test_invalid_settings():
    with pytest.raises(ValueError):
        Agglomerative(eta=0.0)
    with pytest.raises(ValueError):
        Agglomerative(eta=1.5)
    with pytest.raises(ValueError):
        Agglomerative(k_c=0)


# ----------------------------------------------------------------------------------------
# the final stage on collapsed features
# ----------------------------------------------------------------------------------------


def collapsed_features(n: int = 300, points: int = 3) -> torch.Tensor:
    """A CNN that collapsed: every sample maps onto one of a few embeddings."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(points, 160))[rng.integers(0, points, n)]
    return KnnGaussian(k_s=20).prepare(torch.from_numpy(x.astype(np.float32)))


def test_rc_on_collapsed_features_still_reaches_the_target():
    f = collapsed_features()
    aff = KnnGaussian(k_s=20)
    ctx = make_ctx(aff, 10)
    assert PathIntegralInit().initial_labels(aff.build(f), f, 10, 0).max() + 1 == 3  # RC alone would stop at 3
    previous = np.arange(300) % 12  # the joint loop's labels, above the target
    clus = Agglomerative(final="rc")
    labels = clus.finalize(f, previous, ctx)
    assert labels.max() + 1 == 10
    assert clus.last_stats["final_initial_clusters"] == 3
    # merges continued from the loop's labels: every final cluster is a union of them
    assert all(len(np.unique(labels[previous == c])) == 1 for c in range(12))
    # with no labels to continue from, it merges up from single samples
    assert Agglomerative(final="rc").finalize(f, None, ctx).max() + 1 == 10


def isolated_case():
    """Three overlapping blobs of 30 points (linked to each other by the kNN graph) and two outliers
    that are each other's nearest neighbour and nobody else's: their cluster has no affinity to any
    other cluster (no 2-path comes back to it)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3]])
    blobs = np.concatenate([c + rng.normal(scale=0.5, size=(30, 2)) for c in centres])
    outliers = np.array([[5.0, 5.0], [5.2, 5.1]])
    x = torch.from_numpy(np.concatenate([blobs, outliers]).astype(np.float32))
    labels = np.concatenate([np.repeat(np.arange(3), 30), [3, 3]]).astype(np.int64)
    return x, labels


@pytest.mark.parametrize("above, absorbed", [(1, True), (2, False), (None, False)])
def test_isolated_clusters_are_absorbed_into_the_nearest_centroid_while_many_remain(above, absorbed):
    x, labels = isolated_case()
    aff = KnnGaussian(k_s=5, normalize="none")
    ctx = make_ctx(aff, n_target=2)
    graph = aff.build(x)
    state = GDL().init(graph, labels)
    assert dict(state.affinities(3)) == {}, "the outlier pair must be isolated for this test"
    assert all(state.affinities(c) for c in range(3)), "the blobs must be linked to each other"
    clusterer = Agglomerative(absorb_isolated_above=above)
    out, _ = clusterer.absorb_isolated(x, graph, labels, ctx)  # 4 clusters: > 1·2 but not > 2·2
    if not absorbed:
        assert np.array_equal(out, labels)
        return
    centroids = np.stack([x.numpy()[labels == c].mean(0) for c in range(3)])
    nearest = int(np.argmin(((centroids - x.numpy()[labels == 3].mean(0)) ** 2).sum(1)))
    assert out.max() == 2 and np.array_equal(out[:90], labels[:90])
    assert set(out[90:]) == {nearest}
    assert clusterer.last_stats["absorbed_isolated"] == 1


def two_linked_blobs_and_an_outlier_pair():
    """Two blobs of 40 points linked by the kNN graph, and two far images that are each other's nearest
    neighbour and nobody else's (the failing final stages on USPS end with such a cluster)."""
    rng = np.random.default_rng(0)
    blobs = np.concatenate([c + rng.normal(scale=0.5, size=(40, 2)) for c in np.array([[0.0, 0.0], [2.5, 0.0]])])
    x = torch.from_numpy(np.concatenate([blobs, [[1.0, 6.0], [1.2, 6.1]]]).astype(np.float32))
    return x, np.repeat(np.arange(2), 40)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.01])
def test_final_stage_sets_outlier_clusters_aside_instead_of_joining_two_classes(fraction):
    x, truth = two_linked_blobs_and_an_outlier_pair()
    aff = KnnGaussian(k_s=5, normalize="none")
    clusterer = Agglomerative(final_outlier_fraction=fraction, absorb_isolated_above=None)
    labels = clusterer.finalize(x, None, make_ctx(aff, n_target=2))
    assert labels.max() + 1 == 2
    blobs = labels[:80]
    if fraction == 0:  # the greedy merges cannot reach the outlier pair: the two blobs share a cluster
        assert len(set(blobs)) == 1 and set(labels[80:]) != set(blobs)
    else:  # 2 images < 0.05 · 82 / 2, and at 0.01 (0.4 images) < the floor of 3 images: set aside, they
        # join the nearest blob, and the blobs stay apart
        assert nmi(truth, blobs) > 0.9
        assert set(labels[80:]) <= set(blobs)
        assert clusterer.last_stats["final_outliers"] == 2


def test_outlier_guard_goes_back_a_period_when_the_outliers_predate_the_last_one():
    """Three linked blobs and two far outlier pairs, η = 0.5: the last period starts from the blobs already
    merged and the two pairs, so no redo of it can leave three classes (MNIST-full's final stage: eight
    clusters of 2-3 images from 116 clusters down). The guard redoes the period before it too."""
    rng = np.random.default_rng(0)
    blobs = np.concatenate([c + rng.normal(scale=0.5, size=(40, 2)) for c in np.array([[0.0, 0.0], [2.5, 0.0], [1.25, 2.2]])])
    far = [[8.0, 8.0], [8.2, 8.1], [-8.0, 8.0], [-8.2, 8.1]]
    x = torch.from_numpy(np.concatenate([blobs, far]).astype(np.float32))
    truth = np.repeat(np.arange(3), 40)
    aff = KnnGaussian(k_s=5, normalize="none")
    plain = Agglomerative(eta=0.5, absorb_isolated_above=None).finalize(x, None, make_ctx(aff, n_target=3))
    assert nmi(truth, plain[:120]) < 0.1  # without the guard the three blobs end in one cluster
    clusterer = Agglomerative(eta=0.5, absorb_isolated_above=None, final_outlier_fraction=0.05)
    labels = clusterer.finalize(x, None, make_ctx(aff, n_target=3))
    assert labels.max() + 1 == 3 and nmi(truth, labels[:120]) > 0.95
    assert clusterer.last_stats["final_outlier_redo_periods"] == 2
    assert clusterer.last_stats["final_outliers"] == 4


def test_outlier_guard_keeps_a_real_class_fifty_times_smaller_than_the_largest():
    """Unequal classes (600, 300, 120, 40 and 12 points): the guard's threshold is 1 % of the mean class
    size N/K (2.1 points here), so the 12-point class stays a class of its own. (A threshold above the
    class's size, e.g. final_outlier_fraction=0.1, would set it aside: the fraction must stay small.)"""
    sizes = [600, 300, 120, 40, 12]
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0], [3.0, 3.0]])
    x = torch.from_numpy(np.concatenate([c + rng.normal(scale=0.6, size=(n, 2)) for c, n in zip(centres, sizes)])
                         .astype(np.float32))
    truth = np.repeat(np.arange(5), sizes)
    clusterer = Agglomerative(final_outlier_fraction=0.01)  # the jule_* recipes' value
    labels = clusterer.finalize(x, None, make_ctx(KnnGaussian(k_s=20, normalize="none"), n_target=5))
    assert nmi(truth, labels) == pytest.approx(1.0)
    assert sorted(np.bincount(labels).tolist()) == sorted(sizes)
    assert "final_outliers" not in clusterer.last_stats
