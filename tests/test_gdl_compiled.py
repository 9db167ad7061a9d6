"""The compiled GDL merge loop (numba) against the Python one: the same labels, bit for bit, on real data.

Every case clusters real images down to K with the JULE final stage's clusterer (isolated clusters
absorbed, the K_c term above 100 clusters, the outlier guard) or plain AC-GDL settings, once with the
Python loop (``linkage.compiled: false``, what runs where numba is not installed) and once compiled.
The stored hashes are the labels the Python loop gave before the compiled one existed; they are
checked where the kNN graph itself is the one they were made from (its hash matches), since another
CPU's float rounding may give another graph.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from jule_kit.data import load_dataset
from jule_kit.hookspecs import ForwardContext
from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian
from jule_kit.plugins.clusterer.agglomerative import Agglomerative
from jule_kit.plugins.initializer.path_integral import PathIntegralInit
from jule_kit.plugins.linkage import gdl

pytestmark = pytest.mark.skipif(gdl.compiled_kernels() is None, reason="numba is not installed")

# (dataset, subset, clusterer settings, linkage settings) -> (graph hash, labels hash of the Python loop)
CASES = {
    ("usps", 3000, "jule", "exact"): ("a294b96bd53e88406469ec96fc0f2f60", "10cfb26edd822389"),  # NMI 0.755
    ("usps", 3000, "ac_gdl", "exact"): ("a294b96bd53e88406469ec96fc0f2f60", "96088b00c1b418c3"),  # NMI 0.762
    ("usps", 3000, "ac_gdl", "fast"): ("a294b96bd53e88406469ec96fc0f2f60", "9726bccd7aa15cd5"),  # NMI 0.765
    ("mnist_test", 4000, "jule", "exact"): ("608d56062db5f17328d41c570f9186ae", "8e5255b3a48c038d"),  # NMI 0.786
    ("coil20", None, "ac_gdl", "middle"): ("1e1dab2c4d8cdbfbcbc32666b1169782", "6dd456bb0e7bda7e"),  # NMI 0.891
}
CLUSTERERS = {
    "jule": dict(final_outlier_fraction=0.01),  # the jule_* recipes' final stage
    "ac_gdl": dict(kc_min_clusters=0, absorb_isolated_above=None),  # the _ac_gdl.yaml settings
}
LINKAGES = {"exact": dict(update="exact"), "fast": dict(update="fast"), "middle": dict(size_norm="middle")}


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def final_stage(features: torch.Tensor, graph, n_target: int, clusterer: str, linkage: dict) -> np.ndarray:
    ctx = ForwardContext(period=1, n_target=n_target, seed=0, build_graph=lambda f, k=None: graph,
                         initializer=PathIntegralInit(), linkage=gdl.GDL(**linkage))
    return Agglomerative(**CLUSTERERS[clusterer]).finalize(features, None, ctx)


@pytest.mark.parametrize("case", list(CASES), ids=["-".join(str(p) for p in case) for case in CASES])
def test_compiled_merge_loop_gives_the_python_loops_labels(case, data_dir):
    name, subset, clusterer, linkage = case
    data = load_dataset(name, data_dir=data_dir, subset=subset)
    affinity = KnnGaussian(k_s=20, normalize="l2")
    features = affinity.prepare(torch.as_tensor(data.images).flatten(1).float() / 255.0)
    graph = affinity.build(features)
    python = final_stage(features, graph, data.n_classes, clusterer, {**LINKAGES[linkage], "compiled": False})
    compiled = final_stage(features, graph, data.n_classes, clusterer, {**LINKAGES[linkage], "compiled": True})
    assert digest(compiled) == digest(python)
    graph_hash, labels_hash = CASES[case]
    if digest(graph.indices) + digest(graph.weights.data) == graph_hash:
        assert digest(python) == labels_hash  # the Python loop still gives the labels it gave before


def test_compiled_state_is_used_where_numba_is_installed_and_can_be_turned_off():
    graph = KnnGaussian(k_s=3, normalize="none").build(torch.rand(20, 2, generator=torch.Generator().manual_seed(0)))
    labels = np.arange(20) // 2
    assert isinstance(gdl.GDL().init(graph, labels), gdl.CompiledGDLState)
    assert isinstance(gdl.GDL(compiled=False).init(graph, labels), gdl.GDLState)


def test_one_compiled_merge_updates_the_table_as_the_python_state_does():
    """Merge by merge: after each of the same merges, both states hold the same affinities."""
    x = torch.rand(200, 5, generator=torch.Generator().manual_seed(1))
    graph = KnnGaussian(k_s=8, normalize="l2").build(x)
    labels = np.arange(200) // 4
    python, compiled = gdl.GDLState(graph, labels, exact=True), gdl.CompiledGDLState(graph, labels, exact=True)
    rng = np.random.default_rng(0)
    for _ in range(30):
        live = python.clusters()
        a = int(rng.choice(list(live)))
        b = min(python.affinities(a), key=lambda c: -python.affinities(a)[c]) if python.affinities(a) else a
        if a == b:
            continue
        merged_p, changed_p = python.merge(a, b)
        merged_c, changed_c = compiled.merge(a, b)
        assert (merged_p, set(changed_p)) == (merged_c, changed_c)
        for c in python.clusters():
            assert dict(compiled.affinities(c)) == python.affinities(c)
    assert np.array_equal(compiled.labels(), python.labels())
