"""DeepCluster as plugins: k-means reassignment with empty-cluster policies, the cross-entropy
head with uniform sampling over pseudo-labels, the Sobel input layer, and a short real run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from jule_kit.backends import available_backends
from jule_kit.cli import app
from jule_kit.hookspecs import ForwardContext
from jule_kit.plugins.backbone.sobel import Sobel
from jule_kit.plugins.backbone.jule_cnn import JuleCNNBackbone
from jule_kit.plugins.clusterer.kmeans_reassign import KMeansReassign, kmeans_policy, pca_whiten, preprocess
from jule_kit.plugins.loss.cross_entropy import CrossEntropy, uniform_label_order

BACKENDS = available_backends()


def duplicated_points(distinct: int = 5, copies: int = 10, dim: int = 8) -> torch.Tensor:
    """``distinct`` points repeated ``copies`` times: k > distinct forces empty clusters."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(distinct, dim, generator=g).repeat_interleave(copies, 0)


def ctx(n_target: int, seed: int = 0) -> ForwardContext:
    def no_graph(*args, **kwargs):
        raise AssertionError("kmeans_reassign builds no graph")

    return ForwardContext(period=0, n_target=n_target, seed=seed, build_graph=no_graph, initializer=None,
                          linkage=None)


# -- k-means and empty clusters -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_leaves_no_empty_cluster_and_counts_them(backend):
    x = duplicated_points()
    result = kmeans_policy(x, 8, niter=10, seed=0, empty="split", backend=backend)
    assert np.bincount(result.labels, minlength=8).min() >= 1  # all 8 clusters used
    assert result.labels.max() == 7
    assert result.empty_clusters >= 3  # at least 8 - 5 clusters had to be split
    assert result.empty_events >= result.empty_clusters
    assert result.history[0] >= 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_counts_the_empty_clusters(backend):
    x = duplicated_points()
    result = kmeans_policy(x, 8, niter=10, seed=0, empty="leave", backend=backend)
    sizes = np.bincount(result.labels, minlength=8)
    unused = int((sizes == 0).sum())
    assert unused >= 3
    assert result.empty_clusters == unused
    assert result.history == [unused] * 11  # every assignment step (10 + the final one) saw them
    # no cluster mixes two distinct points: each duplicate group keeps one label
    groups = result.labels.reshape(5, 10)
    assert (groups == groups[:, :1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_drops_empty_clusters_and_relabels(backend):
    x = duplicated_points()
    result = kmeans_policy(x, 8, niter=10, seed=0, empty="nearest", backend=backend)
    n_clusters = len(np.unique(result.labels))
    assert result.labels.max() + 1 == n_clusters  # contiguous
    assert n_clusters <= 5
    assert result.centroids.shape == (n_clusters, 8)
    assert result.empty_clusters == 8 - n_clusters
    # every point is at its nearest remaining centroid
    d = ((x[:, None, :] - torch.as_tensor(result.centroids)[None]) ** 2).sum(2)
    assert (d.argmin(1).numpy() == result.labels).all()


def test_plugin_reports_empty_clusters_and_returns_contiguous_labels():
    x = duplicated_points()
    for empty, expect in (("split", 8), ("nearest", None), ("leave", None)):
        plugin = KMeansReassign(k=8, niter=10, pca_dim=0, empty=empty)
        labels = plugin.forward(x, None, ctx(n_target=2))
        assert labels.dtype == np.int64
        assert set(np.unique(labels)) == set(range(labels.max() + 1))
        assert plugin.last_stats["empty_clusters"] >= 3
        if expect is not None:
            assert labels.max() + 1 == expect
    assert plugin.done(labels, 2) is False


@pytest.mark.parametrize("empty", ["split", "nearest", "leave"])
def test_faiss_and_torch_agree(empty):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 16, generator=g).repeat(25, 1) + 0.3 * torch.randn(200, 16, generator=g)
    x = base.repeat(2, 1)  # every row twice: two initial centroids on one row make an empty cluster
    a = kmeans_policy(x, 40, niter=20, seed=3, empty=empty, backend="faiss")
    b = kmeans_policy(x, 40, niter=20, seed=3, empty=empty, backend="torch")
    assert a.empty_clusters == 3  # the policy did act
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    assert (a.empty_clusters, a.empty_events, a.history) == (b.empty_clusters, b.empty_events, b.history)
    assert a.loss == pytest.approx(b.loss, rel=1e-4)


def test_pca_whitening_caps_dims_and_whitens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g) @ torch.randn(8, 8, generator=g)
    w = pca_whiten(x, 256)
    assert w.shape == (50, 8)  # capped at min(256, D, N - 1)
    torch.testing.assert_close(torch.cov(w.T, correction=0), torch.eye(8), atol=1e-4, rtol=0)
    wide = torch.randn(6, 40, generator=g)  # D > N: through the Gram matrix
    assert pca_whiten(wide, 256).shape == (6, 5)
    y = preprocess(torch.cat([torch.zeros(1, 8), x]), 0, False)  # a zero row stays finite
    assert torch.isfinite(y).all() and y[0].abs().sum() == 0
    torch.testing.assert_close(y[1:].norm(dim=1), torch.ones(50))


def test_default_k_is_ten_times_the_target_and_finalize_gives_the_target():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 12, generator=g).repeat(40, 1) + 0.05 * torch.randn(320, 12, generator=g)
    plugin = KMeansReassign()
    labels = plugin.forward(x, None, ctx(n_target=3))
    assert labels.max() + 1 == 30 and plugin.last_stats["k"] == 30
    final = plugin.finalize(x, labels, ctx(n_target=3))
    assert final.max() + 1 == 3 and plugin.last_stats["k"] == 3


# -- cross-entropy head and uniform sampling -----------------------------------------------------


def test_uniform_sampling_balances_pseudo_labels():
    labels = np.repeat(np.arange(5), [700, 200, 60, 35, 5])  # very uneven clusters, N = 1000
    n = len(labels)
    full = uniform_label_order(labels, torch.Generator().manual_seed(0), truncate=False)
    counts = np.bincount(labels[full.numpy()], minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.min() == n // 5 + 1
    order = CrossEntropy().epoch_order(labels, torch.Generator().manual_seed(0))
    assert len(order) == n
    drawn = np.bincount(labels[order.numpy()], minlength=5)
    assert (drawn > 0).all()
    assert drawn.max() - drawn.min() <= 5  # the cut removes at most #labels draws
    # big clusters are sampled without replacement, small ones with
    big = order[labels[order.numpy()] == 0]
    assert len(torch.unique(big)) == len(big)
    assert len(torch.unique(order[labels[order.numpy()] == 4])) <= 5
    # the same generator state gives the same order
    again = CrossEntropy().epoch_order(labels, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_fresh_head_every_period():
    loss = CrossEntropy()
    labels_a = np.arange(1200) % 40
    labels_b = np.arange(1200) % 37
    a = loss.criterion(160, labels_a, seed=11)
    b = loss.criterion(160, labels_b, seed=12)
    assert a.head.out_features == 40 and b.head.out_features == 37
    assert a.head.in_features == b.head.in_features == 160
    for crit in (a, b):
        w = crit.head.weight.detach()
        assert abs(float(w.std()) - 0.01) < 0.0005 and abs(float(w.mean())) < 0.0005
        assert crit.head.bias.abs().max() == 0
        assert all(p.requires_grad for p in crit.parameters())
    assert not torch.equal(a.head.weight[:37], b.head.weight)
    # the same seed rebuilds the same head; a trained head does not leak into the next period
    with torch.no_grad():
        a.head.weight.add_(1.0)
    torch.testing.assert_close(loss.criterion(160, labels_a, seed=11).head.weight, a.head.weight - 1.0)
    f = torch.nn.functional.normalize(torch.randn(8, 160), dim=1)
    value = b(f, torch.as_tensor(labels_b[:8]))
    assert value.item() == pytest.approx(math.log(37), abs=0.05)  # near-uniform logits at init


# -- Sobel -----------------------------------------------------------------------------------


def test_sobel_layer():
    for c in (1, 3):
        layer = Sobel(c)
        assert list(layer.parameters()) == []
        x = torch.rand(2, c, 9, 11)
        assert layer(x).shape == (2, 2, 9, 11)
    grey = torch.rand(2, 1, 9, 11)
    torch.testing.assert_close(Sobel(3)(grey.repeat(1, 3, 1, 1)), Sobel(1)(grey))
    ramp = torch.arange(6.0).repeat(6, 1)[None, None]  # increases along x only
    out = Sobel(1)(ramp)[0, :, 1:-1, 1:-1]
    assert (out[0] == -8).all() and (out[1] == 0).all()


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 32, 32)])
def test_jule_cnn_with_sobel(shape):
    model = JuleCNNBackbone(blocks=1, sobel=True).build(shape)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.in_channels == 2
    assert all(p is not model.sobel.weight for p in model.parameters())
    assert model(torch.rand(3, *shape)).shape == (3, 160)
    plain = JuleCNNBackbone(blocks=1).build(shape)
    assert next(m for m in plain.modules() if isinstance(m, nn.Conv2d)).in_channels == shape[0]


# -- a short real run ------------------------------------------------------------------------


def test_deepcluster_usps_run(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "recipes/deepcluster_usps.yaml", "--set", f"data={usps_subset}",
                                 "--set", "train.max_periods=2", "--device", "cpu", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["period"] for r in rows] == [0, 1, "final"]
    assert all("empty_clusters" in r for r in rows)
    assert "nmi_prev" in rows[1] and 0 <= rows[1]["nmi_prev"] <= 1
    assert rows[0]["clusters"] == 50 and "loss" in rows[0]  # the recipe's k
    assert rows[-1]["clusters"] == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_clusters"] == 10 and summary["periods"] == 2
    assert 0 < summary["nmi"] <= 1
