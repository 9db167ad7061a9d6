"""Initial over-clustering: nearest-neighbour chains (path integral init) and singletons."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian
from jule_kit.plugins.initializer.path_integral import PathIntegralInit, Singletons, nearest_neighbour_chains

# the benchmark datasets: $JULEKIT_DATA, else ../shared/datasets next to the repository
DATA = Path(os.environ.get("JULEKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
MNIST_TEST = DATA / "mnist_test.npz"


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings define the same partition (ids may differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def union_find_components(nearest: np.ndarray) -> np.ndarray:
    """Weakly connected components of i -> nearest[i], by union-find."""
    parent = list(range(len(nearest)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in enumerate(nearest):
        ri, rj = find(i), find(int(j))
        if ri != rj:
            parent[ri] = rj
    return np.array([find(i) for i in range(len(nearest))])


def assert_contiguous(labels: np.ndarray) -> None:
    assert labels.dtype == np.int64
    assert labels.min() == 0
    assert set(labels.tolist()) == set(range(int(labels.max()) + 1))


# ----------------------------------------------------------------------------------------
# hand-made examples
# ----------------------------------------------------------------------------------------

# 0 <-> 1 (mutual pair), 2 -> 1, 9 -> 2          : {0, 1, 2, 9}
# 3 <-> 4, 5 -> 3                                : {3, 4, 5}
# 6 -> 7 -> 8 -> 6 (a 3-cycle, no self-loop)     : {6, 7, 8}
HAND_NEAREST = np.array([1, 0, 1, 4, 3, 3, 7, 8, 6, 2])
HAND_PARTITION = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])


@pytest.mark.parametrize("max_chain", [None, 50, 4])
def test_hand_example_is_weak_components(max_chain):
    labels = nearest_neighbour_chains(HAND_NEAREST, max_chain)
    assert_contiguous(labels)
    assert labels.max() + 1 == 3
    assert same_partition(labels, HAND_PARTITION), labels


def test_hand_example_two_mutual_pairs_stay_apart():
    # 0 <-> 1 and 2 <-> 3 with 4 -> 0 and 5 -> 3
    labels = nearest_neighbour_chains(np.array([1, 0, 3, 2, 0, 3]))
    assert same_partition(labels, np.array([0, 0, 1, 1, 0, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_random_functional_graphs_match_union_find(seed):
    rng = np.random.default_rng(seed)
    n = 300
    nearest = rng.integers(0, n - 1, size=n)
    nearest[nearest >= np.arange(n)] += 1  # never a self-loop
    want = union_find_components(nearest)
    assert same_partition(nearest_neighbour_chains(nearest), want)
    assert same_partition(nearest_neighbour_chains(nearest, max_chain=n + 1), want)


def path_with_tail(length: int) -> np.ndarray:
    """0 -> 1 -> ... -> length-1, ending in the mutual pair (length-2, length-1)."""
    nearest = np.arange(1, length + 1)
    nearest[-1] = length - 2
    return nearest


def test_max_chain_cuts_long_chains():
    chain = path_with_tail(30)
    # a separate short component: 30 -> 31 -> 32 -> 31
    nearest = np.concatenate([chain, [31, 32, 31]])
    uncapped = nearest_neighbour_chains(nearest)
    assert uncapped.max() + 1 == 2

    cap = 5
    labels = nearest_neighbour_chains(nearest, max_chain=cap)
    assert_contiguous(labels)
    # the long chain is split into several pieces, the short component is not
    assert len(set(labels[:30].tolist())) > 1
    assert len(set(labels[30:].tolist())) == 1
    assert not set(labels[:30].tolist()) & set(labels[30:].tolist())
    sizes = np.bincount(labels[:30])
    sizes = sizes[sizes > 0]
    assert sizes.max() <= cap + 2
    assert sizes.sum() == 30
    # every piece is a contiguous stretch of the chain, and the pieces refine the components
    for c in set(labels[:30].tolist()):
        members = np.flatnonzero(labels == c)
        assert np.array_equal(members, np.arange(members[0], members[-1] + 1))
    assert len(set(zip(labels.tolist(), uncapped.tolist()))) == labels.max() + 1


def test_max_chain_larger_than_chain_changes_nothing():
    nearest = path_with_tail(30)
    assert nearest_neighbour_chains(nearest, max_chain=40).max() == 0
    assert nearest_neighbour_chains(nearest, max_chain=5).max() > 0


def torch_reference_chains(nearest: np.ndarray, cap: int) -> np.ndarray:
    """The Torch code's agg_clustering.init on 1-NN pointers, transcribed (0-based)."""
    n = len(nearest)
    visited = np.full(n, -1)
    count = 0
    for i in range(n):
        cur, pos = i, []
        while visited[cur] == -1:
            pos.append(cur)
            nb = int(nearest[cur])
            visited[cur] = -2
            cur = nb
            if len(pos) > cap:
                break
        if visited[cur] < 0:
            visited[cur] = count
            count += 1
        for j in pos:
            visited[j] = visited[cur]
    return visited


def test_max_chain_matches_torch_reference():
    nearest = path_with_tail(120)
    assert same_partition(nearest_neighbour_chains(nearest, max_chain=50), torch_reference_chains(nearest, 50))


# ----------------------------------------------------------------------------------------
# real data: the paper's 1,762 initial clusters on MNIST-test
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_graph():
    if not MNIST_TEST.exists():  # pragma: no cover - depends on the machine
        pytest.fail(f"{MNIST_TEST} not found: set JULEKIT_DATA to the folder holding the benchmark datasets")
    x = np.load(MNIST_TEST)["images"].reshape(10000, -1).astype(np.float32) / 255.0
    aff = KnnGaussian(k_s=20, normalize="l2")
    f = aff.prepare(torch.from_numpy(x))
    return aff.build(f), f


@pytest.mark.slow
def test_path_integral_on_mnist_test_gives_1762_clusters(mnist_graph):
    graph, f = mnist_graph
    labels = PathIntegralInit().initial_labels(graph, f, n_target=10, seed=0)
    assert labels.shape == (10000,)
    assert_contiguous(labels)
    assert labels.max() + 1 == 1762
    assert same_partition(labels, union_find_components(graph.indices[:, 0]))
    # every sample shares its cluster with its nearest neighbour
    assert np.all(labels == labels[graph.indices[:, 0]])


@pytest.mark.slow
def test_singletons_on_mnist_test(mnist_graph):
    graph, f = mnist_graph
    labels = Singletons().initial_labels(graph, f, n_target=10, seed=0)
    np.testing.assert_array_equal(labels, np.arange(10000))
    assert labels.dtype == np.int64


def test_singletons_small():
    g = KnnGaussian(k_s=2, normalize="none").build(torch.randn(7, 3))
    labels = Singletons().initial_labels(g, None, n_target=1, seed=0)
    assert labels.max() + 1 == 7 and len(set(labels.tolist())) == 7
