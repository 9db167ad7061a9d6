"""Linkage ``average``: the sparse table equals the dense formula, before and after merges."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from jule_kit.cli import app
from jule_kit.hookspecs import Graph
from jule_kit.registry import get_registry

REPO = Path(__file__).resolve().parent.parent


def random_graph(n: int, k: int, rng: np.random.Generator) -> Graph:
    x = rng.normal(size=(n, 3))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    idx = np.argsort(d2, axis=1)[:, :k]
    dist2 = np.take_along_axis(d2, idx, 1)
    sigma2 = float(dist2.mean())
    w = sp.csr_matrix((np.exp(-dist2 / sigma2).ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return Graph(indices=idx.astype(np.int64), dist2=dist2.astype(np.float32), weights=w, sigma2=sigma2)


def brute_force(w: np.ndarray, labels: np.ndarray) -> dict[tuple[int, int], float]:
    """A(Ci, Cj) = Σ_{u∈Ci, v∈Cj} (W_uv + W_vu) / (|Ci| |Cj|), straight from the definition."""
    ids = np.unique(labels)
    out = {}
    for a in ids:
        for b in ids:
            if a == b:
                continue
            ua, vb = np.flatnonzero(labels == a), np.flatnonzero(labels == b)
            total = sum(w[u, v] + w[v, u] for u in ua for v in vb)
            if total > 0:
                out[(int(a), int(b))] = total / (len(ua) * len(vb))
    return out


def table(state) -> dict[tuple[int, int], float]:
    return {(a, b): v for a in state.clusters() for b, v in state.affinities(a).items()}


def assert_tables_equal(state, w: np.ndarray) -> None:
    expected = brute_force(w, state.labels())
    got = table(state)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9, rel=1e-9)
    for a in state.clusters():  # symmetric
        for b, v in state.affinities(a).items():
            assert state.affinities(b)[a] == v


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_matches_dense_formula_initially_and_after_merges(seed):
    rng = np.random.default_rng(seed)
    n = 80
    graph = random_graph(n, 5, rng)
    w = graph.weights.toarray()
    labels = rng.integers(0, 40, size=n)
    labels = np.unique(labels, return_inverse=True)[1]
    linkage = get_registry().get("linkage", "average").create()
    state = linkage.init(graph, labels)
    assert_tables_equal(state, w)
    merges = 0
    while len(list(state.clusters())) > 2:
        live = sorted(state.clusters())
        a = int(rng.choice(live))
        if state.affinities(a) and rng.random() < 0.8:
            b = int(rng.choice(sorted(state.affinities(a))))  # usually an adjacent pair, as the clusterer merges
        else:
            b = int(rng.choice([c for c in live if c != a]))  # sometimes an unlinked one
        before = set(state.clusters())
        merged, changed = state.merge(a, b)
        merges += 1
        assert merged in (a, b) and set(state.clusters()) == before - {a if merged == b else b}
        assert merged in set(changed)
        assert {y for y in state.affinities(merged)} <= set(changed)
        assert_tables_equal(state, w)
    assert merges >= 30


def test_average_linkage_state_protocol():
    from jule_kit.hookspecs import Linkage, LinkageState

    rng = np.random.default_rng(5)
    graph = random_graph(30, 4, rng)
    linkage = get_registry().get("linkage", "average").create()
    assert isinstance(linkage, Linkage)
    state = linkage.init(graph, np.arange(30))
    assert isinstance(state, LinkageState)
    # singletons: A(u, v) = W_uv + W_vu
    w = graph.weights.toarray()
    for (a, b), v in table(state).items():
        assert v == pytest.approx(w[a, b] + w[b, a], abs=1e-12)


def test_graph_average_linkage_runs_on_raw_coil20(runner, data_dir, tmp_path):
    out = tmp_path / "ac_link"
    result = runner.invoke(app, ["run", str(REPO / "recipes" / "ac_gdl_coil20.yaml"), "--data-dir", str(data_dir),
                                 "--set", "linkage=average", "--out", str(out), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"]["linkage"] == {"name": "average"}
    assert summary["n_clusters"] == 20 and summary["n_samples"] == 1440
    assert 0.3 < summary["nmi"] < 0.93  # a working clustering, below AC-GDL's 0.937
