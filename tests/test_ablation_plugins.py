"""The ``kmeans`` initializer, the ``timm`` backbone and the ``name:value`` recipe shorthand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit.errors import RecipeError
from jule_kit.hookspecs import Backbone, Initializer
from jule_kit.recipe import apply_overrides, load_raw, load_recipe, validate
from jule_kit.registry import get_registry

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def make(kind: str, name: str, **settings):
    return get_registry().get(kind, name).create(settings)


# -- kmeans initializer --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_initializer_cluster_counts(backend):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(200, 5)), dtype=torch.float32)
    init = make("initializer", "kmeans", backend=backend)
    assert isinstance(init, Initializer)
    labels = init.initial_labels(None, x, 10, seed=3)
    assert labels.dtype == np.int64 and labels.shape == (200,)
    assert set(np.unique(labels)) == set(range(50))  # round(N / 4), contiguous
    assert set(np.unique(make("initializer", "kmeans", n_clusters=None, backend=backend)
                         .initial_labels(None, x, 80, seed=3))) == set(range(80))  # never below the target
    target = make("initializer", "kmeans", n_clusters="target", backend=backend).initial_labels(None, x, 7, seed=3)
    assert set(np.unique(target)) == set(range(7))
    fixed = make("initializer", "kmeans", n_clusters=30, backend=backend).initial_labels(None, x, 7, seed=3)
    assert int(fixed.max()) + 1 == 30


def test_kmeans_initializer_drops_empty_clusters():
    # 3 distinct points, each 10 times: 6 centroids start on duplicates, so some clusters stay empty
    x = torch.as_tensor(np.repeat(np.eye(3), 10, axis=0), dtype=torch.float32)
    labels = make("initializer", "kmeans", n_clusters=6, backend="torch").initial_labels(None, x, 2, seed=0)
    ids = np.unique(labels)
    assert ids.tolist() == list(range(len(ids))) and len(ids) <= 3


def test_kmeans_initializer_restarts_keep_the_best():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(np.concatenate([rng.normal(c, 0.1, size=(40, 2)) for c in ((0, 0), (5, 0), (0, 5), (5, 5))]),
                        dtype=torch.float32)
    truth = np.repeat(np.arange(4), 40)
    from jule_kit.metrics import nmi

    labels = make("initializer", "kmeans", n_clusters="target", n_init=10, backend="torch").initial_labels(None, x, 4, 0)
    assert nmi(truth, labels) == pytest.approx(1.0)


def test_kmeans_initializer_bad_settings():
    with pytest.raises(ValueError):
        make("initializer", "kmeans", n_clusters=0)
    recipe = load_raw(RECIPES / "kmeans_usps.yaml")
    with pytest.raises(RecipeError, match="n_clusters"):
        validate(apply_overrides(recipe, ["initializer.n_clusters=all"]))


# -- timm backbone -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 64, 64)])
def test_timm_backbone_shape_and_unit_norm(shape):
    torch.manual_seed(0)
    backbone = make("backbone", "timm", model="resnet18")
    assert isinstance(backbone, Backbone)
    net = backbone.build(shape)
    assert net.embedding_dim == 512
    z = net.eval()(torch.rand(4, *shape))
    assert z.shape == (4, 512)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    # training mode runs and back-propagates too
    net.train()
    net(torch.rand(4, *shape)).sum().backward()


def test_timm_backbone_projection_and_upsampling():
    net = make("backbone", "timm", model="resnet18", embedding_dim=32, min_size=40).build((1, 16, 20))
    assert net.embedding_dim == 32 and net.size == (40, 50)
    z = net.eval()(torch.rand(3, 1, 16, 20))
    assert z.shape == (3, 32) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert make("backbone", "timm", model="resnet18").build((3, 64, 64)).size is None  # large enough already


def test_timm_backbone_unknown_model_suggests():
    with pytest.raises(RecipeError, match="did you mean 'resnet18'"):
        load_recipe(RECIPES / "jule_usps.yaml", ["backbone=timm:resnt18"])


# -- the name:value shorthand --------------------------------------------------------------


def test_shorthand_expands_to_the_plugin_setting():
    resolved = load_recipe(RECIPES / "jule_usps.yaml", ["backbone=timm:resnet18"])
    assert resolved["backbone"] == {"name": "timm", "model": "resnet18", "pretrained": False, "min_size": 32,
                                    "embedding_dim": None}
    # further --set keys apply to the shorthand's plugin
    resolved = load_recipe(RECIPES / "jule_usps.yaml", ["backbone=timm:efficientnet_b0", "backbone.embedding_dim=64"])
    assert resolved["backbone"]["model"] == "efficientnet_b0" and resolved["backbone"]["embedding_dim"] == 64


def test_shorthand_in_a_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"extends: {RECIPES / '_jule.yaml'}\ndata: usps\nbackbone: timm:resnet34\n")
    assert load_recipe(path)["backbone"]["model"] == "resnet34"


def test_shorthand_needs_a_plugin_that_declares_it():
    with pytest.raises(RecipeError, match="no name:value shorthand"):
        load_recipe(RECIPES / "jule_usps.yaml", ["backbone=jule_cnn:3"])
    with pytest.raises(RecipeError, match="unknown backbone plugin 'timmm'"):
        load_recipe(RECIPES / "jule_usps.yaml", ["backbone=timmm:resnet18"])
