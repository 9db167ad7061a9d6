"""Graph degree linkage: the sparse state against a dense brute-force of the paper's formula.

B(x→y) = Σ_{m∈Cy} (Σ_{u∈Cx} W[u,m]) · (Σ_{v∈Cx} W[m,v])
A(i,j) = B(i→j)/|Ci|² + B(j→i)/|Cj|²
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from jule_kit.hookspecs import Graph
from jule_kit.metrics import contiguous
from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian
from jule_kit.plugins.linkage import gdl as gdl_module
from jule_kit.plugins.linkage.gdl import GDL, gdl_tables


@pytest.fixture(autouse=True, params=["compiled", "python"])
def merge_loop(request, monkeypatch):
    """Every test on both GDL states: the compiled one (numba is a dependency), and the Python one that
    runs where numba is not installed."""
    if request.param == "python":
        monkeypatch.setattr(gdl_module, "compiled_kernels", lambda: None)
    return request.param

# ----------------------------------------------------------------------------------------
# dense reference
# ----------------------------------------------------------------------------------------


def dense_b(w: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """B[x, y] = B(x→y) straight from the definition (diagonal included)."""
    n_clusters = int(labels.max()) + 1
    b = np.zeros((n_clusters, n_clusters))
    for x in range(n_clusters):
        cx = np.flatnonzero(labels == x)
        d_in = w[cx, :].sum(0)  # d_in(m←Cx) = Σ_{u∈Cx} W[u, m]
        d_out = w[:, cx].sum(1)  # d_out(m→Cx) = Σ_{v∈Cx} W[m, v]
        for y in range(n_clusters):
            cy = np.flatnonzero(labels == y)
            b[x, y] = float(np.sum(d_in[cy] * d_out[cy]))
    return b


def dense_a(w: np.ndarray, labels: np.ndarray, middle: bool = False) -> np.ndarray:
    b = dense_b(w, labels)
    sizes = np.bincount(labels).astype(np.float64)
    q = b / sizes[None, :] ** 2 if middle else b / sizes[:, None] ** 2  # B(i→j)/|j|² or /|i|²
    a = q + q.T
    np.fill_diagonal(a, 0.0)
    return a


def random_case(seed: int, n: int, d: int, k_s: int, n_clusters: int):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    graph = KnnGaussian(k_s=k_s, normalize="none").build(x)
    labels = rng.permutation(np.arange(n) % n_clusters).astype(np.int64)  # every cluster non-empty
    return graph, labels


CASES = [
    # seed, N, D, K_s, clusters
    (0, 60, 4, 3, 10),
    (1, 120, 6, 5, 25),
    (2, 200, 8, 8, 40),
    (3, 150, 5, 3, 40),
    (4, 90, 7, 8, 12),
]


def assert_state_matches(state, expected: np.ndarray, ids: dict[int, int], tol: float = 1e-6) -> None:
    """Every pair of live clusters: state.affinities equals the dense table (absent = 0)."""
    live = list(state.clusters())
    assert sorted(ids[c] for c in live) == list(range(expected.shape[0]))
    for c in live:
        aff = state.affinities(c)
        assert c not in aff, "a cluster must not be its own neighbour"
        assert all(v > 0 for v in aff.values()), "only positive affinities are stored"
        assert set(aff) <= set(live), "affinity to a cluster that no longer exists"
        for o in live:
            if o == c:
                continue
            got = aff.get(o, 0.0)
            want = expected[ids[c], ids[o]]
            assert got == pytest.approx(want, abs=tol, rel=1e-9), (c, o, got, want)
        # no positive dense entry is missing from the sparse row
        for o in live:
            if o != c and expected[ids[c], ids[o]] > tol:
                assert o in aff


def state_ids(state) -> dict[int, int]:
    """Map the state's cluster ids to the contiguous ids of ``contiguous(state.labels())``."""
    lab = state.labels()
    uniq = np.unique(lab)
    return {int(c): i for i, c in enumerate(uniq)}


# ----------------------------------------------------------------------------------------
# init
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n,d,k_s,n_clusters", CASES)
def test_init_matches_dense_formula(seed, n, d, k_s, n_clusters):
    graph, labels = random_case(seed, n, d, k_s, n_clusters)
    w = graph.weights.toarray()
    expected = dense_a(w, labels)
    state = GDL().init(graph, labels)
    assert sorted(state.clusters()) == list(range(n_clusters))
    assert_state_matches(state, expected, {c: c for c in range(n_clusters)})
    # symmetry of the stored table
    for c in state.clusters():
        for o, v in state.affinities(c).items():
            assert state.affinities(o)[c] == pytest.approx(v, rel=1e-12)


@pytest.mark.parametrize("seed,n,d,k_s,n_clusters", CASES)
def test_gdl_tables_equals_dense_b(seed, n, d, k_s, n_clusters):
    graph, labels = random_case(seed, n, d, k_s, n_clusters)
    b = gdl_tables(graph.weights, labels)
    assert b.shape == (n_clusters, n_clusters)
    want = dense_b(graph.weights.toarray(), labels)
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(b.toarray(), want, rtol=1e-10, atol=1e-12)
    assert np.all(b.diagonal() == 0)


def test_singletons_init_matches_dense():
    graph, _ = random_case(7, 50, 3, 5, 2)
    labels = np.arange(50, dtype=np.int64)
    state = GDL().init(graph, labels)
    assert_state_matches(state, dense_a(graph.weights.toarray(), labels), {c: c for c in range(50)})


# ----------------------------------------------------------------------------------------
# merges: local update == recomputation
# ----------------------------------------------------------------------------------------


def pick_pair(state, rng, want_adjacent: bool, bigger_first: bool):
    live = sorted(state.clusters())
    pairs = []
    for a in live:
        for b in live:
            if a == b:
                continue
            if (b in state.affinities(a)) != want_adjacent:
                continue
            if state.size[a] == state.size[b]:
                continue
            if (state.size[a] > state.size[b]) != bigger_first:
                continue
            pairs.append((a, b))
    if not pairs:
        return None
    return pairs[rng.integers(len(pairs))]


@pytest.mark.parametrize("seed,n,d,k_s,n_clusters", CASES[:4])
def test_merges_equal_recomputation(seed, n, d, k_s, n_clusters):
    graph, labels = random_case(seed, n, d, k_s, n_clusters)
    # uneven cluster sizes so that "which id survives" is exercised both ways
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, n_clusters, size=n)
    labels[:n_clusters] = np.arange(n_clusters)
    labels = contiguous(labels)
    w = graph.weights.toarray()
    state = GDL().init(graph, labels)
    kinds = [(True, True), (True, False), (False, True), (False, False)]
    merges = {"adjacent": 0, "non_adjacent": 0}
    step = 0
    while len(list(state.clusters())) > 2:
        want_adjacent, bigger_first = kinds[step % len(kinds)]
        step += 1
        pair = pick_pair(state, rng, want_adjacent, bigger_first)
        if pair is None:
            pair = pick_pair(state, rng, not want_adjacent, bigger_first) or pick_pair(
                state, rng, want_adjacent, not bigger_first) or pick_pair(state, rng, not want_adjacent, not bigger_first)
        if pair is None:  # only equal sizes left: any two clusters
            live = sorted(state.clusters())
            pair = (live[0], live[1])
        a, b = pair
        adjacent = b in state.affinities(a)
        merges["adjacent" if adjacent else "non_adjacent"] += 1
        size_a, size_b = state.size[a], state.size[b]
        before = {c: dict(state.affinities(c)) for c in state.clusters()}

        merged, changed = state.merge(a, b)
        changed = set(changed)

        # the id of the larger cluster survives; the other is gone
        if size_a != size_b:
            assert merged == (a if size_a > size_b else b)
        gone = b if merged == a else a
        assert gone not in set(state.clusters())
        assert merged in changed and gone not in changed
        assert state.size[merged] == size_a + size_b
        assert np.sum(state.labels() == merged) == size_a + size_b
        assert not np.any(state.labels() == gone)
        # clusters reported as unchanged really kept their affinity rows
        for c in state.clusters():
            if c not in changed:
                assert dict(state.affinities(c)) == before[c], c

        ids = state_ids(state)
        new_labels = contiguous(state.labels())
        expected = dense_a(w, new_labels)
        assert_state_matches(state, expected, ids)
        fresh = GDL().init(graph, new_labels)
        for c in state.clusters():
            got = state.affinities(c)
            want = fresh.affinities(ids[c])
            assert {ids[o] for o in got} == set(want), c
            for o, v in got.items():
                assert v == pytest.approx(want[ids[o]], abs=1e-6, rel=1e-9)
    assert merges["adjacent"] >= 2 and merges["non_adjacent"] >= 2, merges


def test_merge_argument_order_is_irrelevant():
    graph, labels = random_case(11, 80, 4, 5, 20)
    s1 = GDL().init(graph, labels)
    s2 = GDL().init(graph, labels)
    a = 3
    b = next(iter(s1.affinities(a)))
    m1, c1 = s1.merge(a, b)
    m2, c2 = s2.merge(b, a)
    assert m1 == m2 and set(c1) == set(c2)
    np.testing.assert_array_equal(s1.labels(), s2.labels())
    for c in s1.clusters():
        assert s1.affinities(c).keys() == s2.affinities(c).keys()
        for o, v in s1.affinities(c).items():
            assert s2.affinities(c)[o] == pytest.approx(v, rel=1e-12)


# ----------------------------------------------------------------------------------------
# update="fast": drops exactly the cross term
# ----------------------------------------------------------------------------------------


def hand_graph() -> tuple[Graph, np.ndarray]:
    """Six samples, clusters a={0,1}, b={2,3}, y={4,5}, two out-edges per sample.

    Sample 4 (in y) receives 0→4 from a and sends 4→2 into b: a 2-path a→4→b that only
    exists once a and b are merged, so the cross term X(y) = 0.5·0.6 = 0.3 > 0.
    """
    edges = {
        0: [(1, 0.9), (4, 0.5)],
        1: [(0, 0.9), (2, 0.4)],
        2: [(3, 0.9), (1, 0.4)],
        3: [(2, 0.9), (4, 0.3)],
        4: [(5, 0.8), (2, 0.6)],
        5: [(4, 0.8), (0, 0.2)],
    }
    idx = np.array([[j for j, _ in edges[i]] for i in range(6)], dtype=np.int64)
    val = np.array([[v for _, v in edges[i]] for i in range(6)], dtype=np.float64)
    w = sp.csr_matrix((val.ravel(), idx.ravel(), np.arange(0, 13, 2)), shape=(6, 6))
    w.sort_indices()
    graph = Graph(indices=idx, dist2=(-np.log(val)).astype(np.float32), weights=w, sigma2=1.0)
    return graph, np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)


def test_fast_drops_cross_term_hand_case():
    graph, labels = hand_graph()
    w = graph.weights.toarray()
    b0 = dense_b(w, labels)
    # by hand: B(a→b) = W[1,2]·W[2,1] = 0.16, B(a→y) = 0, B(b→y) = W[3,4]·W[4,2] = 0.18
    assert b0[0, 1] == pytest.approx(0.16)
    assert b0[0, 2] == pytest.approx(0.0)
    assert b0[1, 2] == pytest.approx(0.18)

    fast = GDL(update="fast").init(graph, labels)
    exact = GDL(update="exact").init(graph, labels)
    assert 1 in fast.affinities(0)  # a and b are adjacent
    m_fast, _ = fast.merge(0, 1)
    m_exact, _ = exact.merge(0, 1)
    assert m_fast == m_exact
    y = 2
    assert fast.b[m_fast][y] == pytest.approx(0.18)  # B(a→y) + B(b→y)
    # exact: merged {0,1,2,3} → y: m=4 has d_in = 0.5 + 0.3, d_out = 0.6 → 0.48
    assert exact.b[m_exact][y] == pytest.approx(0.48)
    merged_labels = np.array([0, 0, 0, 0, 1, 1])
    assert exact.b[m_exact][y] == pytest.approx(dense_b(w, merged_labels)[0, 1])
    assert fast.b[m_fast][y] < exact.b[m_exact][y] - 0.29
    # the column update B(y→M) is exact in both modes
    assert fast.b[y][m_fast] == pytest.approx(dense_b(w, merged_labels)[1, 0])
    assert exact.b[y][m_exact] == pytest.approx(dense_b(w, merged_labels)[1, 0])
    # and the affinities follow from the tables
    assert fast.affinities(m_fast)[y] == pytest.approx(0.18 / 16 + fast.b[y][m_fast] / 4)
    assert exact.affinities(m_exact)[y] == pytest.approx(dense_a(w, merged_labels)[0, 1])


@pytest.mark.parametrize("seed,n,d,k_s,n_clusters", CASES)
def test_fast_row_is_sum_of_rows(seed, n, d, k_s, n_clusters):
    graph, labels = random_case(seed, n, d, k_s, n_clusters)
    w = graph.weights.toarray()
    b0 = dense_b(w, labels)
    fast = GDL(update="fast").init(graph, labels)
    exact = GDL(update="exact").init(graph, labels)
    # the most strongly linked adjacent pair
    a, b = max(((c, o) for c in range(n_clusters) for o in fast.affinities(c)), key=lambda p: fast.affinities(p[0])[p[1]])
    m_fast, _ = fast.merge(a, b)
    m_exact, _ = exact.merge(a, b)
    assert m_fast == m_exact
    for y in fast.clusters():
        if y == m_fast:
            continue
        want = b0[a, y] + b0[b, y]
        got = fast.b[m_fast].get(y, 0.0)
        assert got == pytest.approx(want, abs=1e-12, rel=1e-9)
        ex = exact.b[m_exact].get(y, 0.0)
        assert got <= ex + 1e-12
        # column update B(y→M) is exact in fast mode too
        assert fast.b[y].get(m_fast, 0.0) == pytest.approx(b0[y, a] + b0[y, b], abs=1e-12, rel=1e-9)
    # the exact row is the dense formula of the merged partition
    new_labels = labels.copy()
    new_labels[new_labels == (b if m_exact == a else a)] = m_exact
    ids = {int(c): i for i, c in enumerate(np.unique(new_labels))}
    b1 = dense_b(w, contiguous(new_labels))
    for y in exact.clusters():
        if y != m_exact:
            assert exact.b[m_exact].get(y, 0.0) == pytest.approx(b1[ids[m_exact], ids[y]], abs=1e-12, rel=1e-9)


@pytest.mark.parametrize("seed,n,d,k_s,n_clusters", CASES[:3])
def test_middle_size_norm_matches_dense_after_every_merge(seed, n, d, k_s, n_clusters):
    graph, _ = random_case(seed, n, d, k_s, n_clusters)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_clusters, size=n)  # uneven sizes: the two norms differ only then
    labels[:n_clusters] = np.arange(n_clusters)
    w = graph.weights.toarray()
    state = GDL(size_norm="middle").init(graph, labels)
    assert_state_matches(state, dense_a(w, labels, middle=True), {c: c for c in range(n_clusters)})
    assert not np.allclose(dense_a(w, labels, middle=True), dense_a(w, labels))  # the setting changes the table
    while len(list(state.clusters())) > 3:
        live = sorted(state.clusters())
        a, b = rng.choice(live, size=2, replace=False)
        state.merge(int(a), int(b))
        now = contiguous(state.labels())
        assert_state_matches(state, dense_a(w, now, middle=True), state_ids(state))
