"""k-nearest-neighbour backends and the Gaussian kNN sample graph."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit.backends import available_backends, knn
from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian

# the benchmark datasets: $JULEKIT_DATA, else ../shared/datasets next to the repository
DATA = Path(os.environ.get("JULEKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
USPS = DATA / "usps.npz"
K = 20


@pytest.fixture(scope="module")
def real_data() -> torch.Tensor:
    assert USPS.exists(), f"benchmark datasets not found: set JULEKIT_DATA to the folder holding usps.npz ({USPS})"
    x = np.load(USPS)["images"][:2000].reshape(2000, -1).astype(np.float64) / 255.0
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x.astype(np.float32))


def exact_dist2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    return np.maximum(sq[:, None] - 2 * x @ x.T + sq[None, :], 0)


def assert_valid_knn(x: np.ndarray, dist2: np.ndarray, idx: np.ndarray, k: int, tol: float = 1e-4) -> None:
    n = x.shape[0]
    # float32 |x|² - 2x·y + |y|² loses absolute precision in proportion to the squared norms
    tol = tol * max(1.0, float((x.astype(np.float64) ** 2).sum(1).max()))
    assert dist2.shape == idx.shape == (n, k)
    assert dist2.dtype == np.float32 and idx.dtype == np.int64
    assert not np.any(idx == np.arange(n)[:, None]), "a query is in its own neighbour list"
    assert all(len(set(row)) == k for row in idx), "a neighbour is listed twice"
    assert np.all(np.diff(dist2, axis=1) >= -tol), "distances are not ascending"
    full = exact_dist2(x)
    np.testing.assert_allclose(dist2, np.take_along_axis(full, idx, 1), atol=tol)
    # nothing outside the list is closer than the k-th neighbour
    np.fill_diagonal(full, np.inf)
    kth = np.sort(full, axis=1)[:, k - 1]
    np.testing.assert_allclose(dist2[:, -1], kth, atol=tol)


def test_faiss_and_torch_agree_on_real_data(real_data):
    assert "faiss" in available_backends(), "faiss-cpu is a dependency: pip install -e ."
    x = real_data
    d_f, i_f = knn(x, K, backend="faiss")
    d_t, i_t = knn(x, K, backend="torch")
    xn = x.numpy()
    assert_valid_knn(xn, d_f, i_f, K)
    assert_valid_knn(xn, d_t, i_t, K)
    np.testing.assert_allclose(d_f, d_t, atol=1e-4)
    same = np.array([set(a) == set(b) for a, b in zip(i_f, i_t)])
    assert same.mean() >= 0.995, same.mean()
    # where the sets differ, the swapped neighbours tie with the k-th distance
    full = exact_dist2(xn)
    for r in np.flatnonzero(~same):
        swapped = list(set(i_f[r]) ^ set(i_t[r]))
        assert np.all(np.abs(full[r, swapped] - d_f[r, -1]) < 1e-4), r


def test_torch_blocks_do_not_change_the_result(real_data):
    x = real_data[:1000]
    d1, i1 = knn(x, K, backend="torch", block=10_000)  # one block
    d2, i2 = knn(x, K, backend="torch", block=100)
    d3, i3 = knn(x, K, backend="torch", block=333)  # last block smaller
    np.testing.assert_allclose(d1, d2, atol=1e-5)
    np.testing.assert_allclose(d1, d3, atol=1e-5)
    for a, b, c in zip(i1, i2, i3):
        assert set(a) == set(b) == set(c)


@pytest.mark.parametrize("backend", available_backends())
def test_exact_duplicates_do_not_hide_self(backend):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 5)).astype(np.float32)
    # rows 40..49 duplicate rows 0..9; rows 50..52 are three more copies of row 0
    x = np.concatenate([base, base[:10], base[[0, 0, 0]]])
    n = len(x)
    dist2, idx = knn(torch.from_numpy(x), 4, backend=backend)
    assert_valid_knn(x, dist2, idx, 4)
    copies = {i: {j for j in range(n) if j != i and np.array_equal(x[i], x[j])} for i in range(n)}
    for i in range(n):
        assert i not in idx[i]
        if copies[i]:
            # all exact copies come first, at distance 0 (up to the list length)
            m = min(len(copies[i]), 4)
            assert set(idx[i, :m]) <= copies[i], (i, idx[i], copies[i])
            assert np.all(dist2[i, :m] <= 1e-5)


@pytest.mark.parametrize("backend", available_backends())
def test_all_points_identical(backend):
    x = torch.ones(12, 3)
    dist2, idx = knn(x, 5, backend=backend)
    assert np.all(dist2 == 0)
    assert not np.any(idx == np.arange(12)[:, None])
    assert all(len(set(row)) == 5 for row in idx)


@pytest.mark.parametrize("k", [0, 10, 11])
def test_k_out_of_range(k):
    with pytest.raises(ValueError):
        knn(torch.zeros(10, 2), k, backend="torch")


# ----------------------------------------------------------------------------------------
# KnnGaussian
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> torch.Tensor:
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=4.0, size=(5, 6))
    x = centres[rng.integers(0, 5, size=300)] + rng.normal(size=(300, 6))
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize("a,k_s", [(1.0, 20), (2.5, 7), (0.3, 1)])
def test_graph_weights(blobs, a, k_s):
    aff = KnnGaussian(k_s=k_s, a=a, normalize="none", backend="torch")
    g = aff.build(blobs)
    n = blobs.shape[0]
    assert g.n_samples == n and g.k == k_s
    assert g.indices.shape == g.dist2.shape == (n, k_s)
    assert g.sigma2 == pytest.approx(a * float(np.mean(g.dist2.astype(np.float64))), rel=1e-12)
    w = g.weights
    assert w.shape == (n, n)
    assert w.dtype == np.float64
    assert np.all(np.diff(w.indptr) == k_s)
    assert np.all(w.diagonal() == 0)
    assert np.all(w.data > 0) and np.all(w.data <= 1)
    dense = w.toarray()
    want = np.exp(-g.dist2.astype(np.float64) / g.sigma2)
    np.testing.assert_allclose(np.take_along_axis(dense, g.indices, 1), want, rtol=1e-12)
    np.testing.assert_array_equal(np.count_nonzero(dense, axis=1), k_s)
    # the graph is directed, not symmetrised: some edge has no reverse edge
    if k_s < 20:
        assert np.any((dense > 0) & (dense.T == 0))
    # the listed neighbours are the true nearest ones
    assert_valid_knn(blobs.numpy(), g.dist2, g.indices, k_s)


def test_graph_k_override_and_limits(blobs):
    aff = KnnGaussian(k_s=5, normalize="none")
    assert aff.build(blobs, k=12).k == 12
    assert aff.build(blobs).k == 5
    with pytest.raises(ValueError):
        aff.build(blobs[:5])
    with pytest.raises(ValueError):
        KnnGaussian(k_s=0)
    with pytest.raises(ValueError):
        KnnGaussian(a=0.0)


def test_sigma_of_exact_duplicates_is_positive():
    g = KnnGaussian(k_s=3, normalize="none").build(torch.ones(8, 4))
    assert g.sigma2 > 0
    assert np.all(np.isfinite(g.weights.data)) and np.all(g.weights.data == 1.0)


def test_normalize_modes():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [1.0, 0.0], [-6.0, 8.0]])
    l2 = KnnGaussian(normalize="l2").prepare(x)
    np.testing.assert_allclose(l2.norm(dim=1).numpy()[[0, 1, 3, 4]], 1.0, rtol=1e-6)
    np.testing.assert_allclose(l2[0].numpy(), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(l2[1].numpy(), [0.6, 0.8], rtol=1e-6)
    assert torch.all(l2[2] == 0)  # a zero row stays zero, no NaN

    ren = KnnGaussian(normalize="renorm").prepare(x)
    norms_in = x.norm(dim=1)
    norms_out = ren.norm(dim=1)
    assert torch.all(norms_out <= 1 + 1e-6)
    np.testing.assert_allclose(ren[0].numpy(), [0.6, 0.8], rtol=1e-6)  # norm 5 -> 1
    np.testing.assert_allclose(ren[4].numpy(), [-0.6, 0.8], rtol=1e-6)  # norm 10 -> 1
    small = norms_in <= 1
    assert torch.equal(ren[small], x[small])  # rows with norm <= 1 are unchanged

    none = KnnGaussian(normalize="none").prepare(x)
    assert torch.equal(none, x)


def test_prepare_flattens_images():
    imgs = torch.rand(6, 1, 4, 4) * 3
    out = KnnGaussian(normalize="l2").prepare(imgs)
    assert out.shape == (6, 16)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, rtol=1e-6)


# -- approximate search (affinity.knn: kmeans_tree | ivf | hnsw | auto) ---------------------------------------------------


@pytest.fixture(scope="module")
def mnist_pixels() -> torch.Tensor:
    """5,000 real MNIST-test images, L2-normalised pixels (784-d)."""
    path = DATA / "mnist_test.npz"
    assert path.exists(), f"benchmark datasets not found: set JULEKIT_DATA to the folder holding {path.name}"
    x = torch.as_tensor(np.load(path)["images"][:5000]).flatten(1).float() / 255.0
    return x / x.norm(dim=1, keepdim=True)


def recall(approximate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) for a, b in zip(approximate, exact)]) / exact.shape[1])


# kmeans_tree at 5,000 points: 100 leaves of 50 (its default, N/256, would be 20 leaves, all visited)
SEARCH_SETTINGS = {"kmeans_tree": {"nlist": 100, "nprobe": 16}, "ivf": {}, "hnsw": {}}


@pytest.mark.parametrize("kind, at_least", [("kmeans_tree", 0.9), ("ivf", 0.95), ("hnsw", 0.99)])
def test_approximate_search_finds_the_real_neighbours(mnist_pixels, kind, at_least):
    if kind != "kmeans_tree":
        pytest.importorskip("faiss")
    from jule_kit.backends import Search

    _, exact = knn(mnist_pixels, K)
    dist2, idx = knn(mnist_pixels, K, search=Search(kind, **SEARCH_SETTINGS[kind]))
    assert idx.shape == (5000, K) and not np.any(idx == np.arange(5000)[:, None])
    assert np.all(np.diff(dist2, axis=1) >= 0)
    assert at_least <= recall(idx, exact) < 1.0
    # the fewer lists visited, the fewer true neighbours found
    if kind in ("kmeans_tree", "ivf"):
        fewer = Search(kind, **{**SEARCH_SETTINGS[kind], "nprobe": 1})
        assert recall(knn(mnist_pixels, K, search=fewer)[1], exact) < recall(idx, exact)


@pytest.mark.parametrize("kind", ["kmeans_tree", "ivf", "hnsw"])
def test_approximate_search_repeats_in_deterministic_mode(mnist_pixels, kind):
    if kind != "kmeans_tree":
        pytest.importorskip("faiss")
    from jule_kit.backends import Search
    from jule_kit.determinism import deterministic_algorithms

    with deterministic_algorithms(True, torch.device("cpu")):
        first, second = (knn(mnist_pixels[:3000], K, search=Search(kind, **SEARCH_SETTINGS[kind])) for _ in range(2))
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[0], second[0])


def test_auto_is_exact_below_the_threshold_and_kmeans_tree_from_it(mnist_pixels):
    x = mnist_pixels[:3000]
    exact = KnnGaussian(knn="exact").build(x)
    assert np.array_equal(KnnGaussian().build(x).indices, exact.indices)  # 3,000 < 100,000
    below = KnnGaussian(knn="auto", exact_below=3001).build(x)
    assert np.array_equal(below.indices, exact.indices)
    tree = KnnGaussian(knn="kmeans_tree", nlist=60, nprobe=6).build(x)
    assert np.array_equal(KnnGaussian(knn="auto", exact_below=3000, nlist=60, nprobe=6).build(x).indices, tree.indices)
    assert not np.array_equal(tree.indices, exact.indices) and recall(tree.indices, exact.indices) > 0.8


def test_the_torch_backend_searches_exactly_where_faiss_would_be_approximate(mnist_pixels):
    x = mnist_pixels[:2000]
    exact = KnnGaussian(knn="exact", backend="torch").build(x)
    assert np.array_equal(KnnGaussian(knn="ivf", backend="torch").build(x).indices, exact.indices)
    # the k-means tree is torch code: the same graph whichever backend serves the exact search
    tree = KnnGaussian(knn="kmeans_tree", backend="torch", nlist=40, nprobe=4).build(x)
    assert np.array_equal(KnnGaussian(knn="kmeans_tree", nlist=40, nprobe=4).build(x).indices, tree.indices)
    assert not np.array_equal(tree.indices, exact.indices)


def test_kmeans_tree_with_leaves_smaller_than_k_searches_wider():
    """Leaves of fewer points than K_s + 1: each leaf visits more leaves until it has enough candidates."""
    from jule_kit.backends import Search

    x = torch.nn.functional.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    dist2, idx = knn(x, K, search=Search("kmeans_tree", nlist=14, nprobe=1))  # about 21 points a leaf
    assert idx.shape == (300, K) and not np.any(idx == np.arange(300)[:, None])
    assert all(len(set(row)) == K for row in idx) and np.all(np.diff(dist2, axis=1) >= 0)
    true = ((x[:, None, :] - x[torch.as_tensor(idx)]) ** 2).sum(2).numpy()  # the distances belong to the indices
    np.testing.assert_allclose(dist2, true, atol=1e-5)


def test_kmeans_tree_sketch_shortlists_pixels_without_losing_neighbours(mnist_pixels):
    """784-d pixels are scored first in a 64-d PCA sketch: the same recall as exact scores of every
    candidate, and the distances returned are still the exact ones; a tiny sketch loses neighbours."""
    from jule_kit.backends import Search

    _, exact = knn(mnist_pixels, K)
    settings = SEARCH_SETTINGS["kmeans_tree"]
    assert Search("kmeans_tree", **settings).sketches(784) and not Search("kmeans_tree", **settings).sketches(160)
    dist2, sketched = knn(mnist_pixels, K, search=Search("kmeans_tree", **settings))
    _, full = knn(mnist_pixels, K, search=Search("kmeans_tree", sketch_dim=None, **settings))
    assert not np.array_equal(sketched, full)  # the sketch path ran
    assert recall(sketched, exact) >= recall(full, exact) - 0.005
    true = ((mnist_pixels[:, None, :] - mnist_pixels[torch.as_tensor(sketched)]) ** 2).sum(2).numpy()
    np.testing.assert_allclose(dist2, true, atol=1e-5)
    _, tiny = knn(mnist_pixels, K, search=Search("kmeans_tree", sketch_dim=2, **settings))
    assert recall(tiny, exact) < recall(full, exact) - 0.02


@pytest.mark.parametrize("setting, value, message", [
    ("sketch_dim", 0, "sketch_dim must be >= 1, got 0"),
    ("nprobe", 0, "nprobe must be >= 1, got 0"), ("nlist", 0, "nlist must be >= 1, got 0"),
    ("ef_search", 0, "ef_search must be >= 1, got 0"), ("hnsw_m", -1, "hnsw_m must be >= 1, got -1")])
def test_bad_index_parameters_fail_at_once(setting, value, message):
    with pytest.raises(ValueError, match=message):
        KnnGaussian(**{setting: value})
