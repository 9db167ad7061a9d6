"""The paper's AC-Link baseline: average linkage on all pairwise distances (initializer dense_linkage)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering

from jule_kit.cli import app
from jule_kit.metrics import nmi
from jule_kit.plugins.initializer.dense_linkage import DenseLinkage


def test_matches_scikit_learn_average_linkage_on_real_images(data_dir):
    d = np.load(data_dir / "coil20.npz")
    idx = np.random.default_rng(0).permutation(len(d["labels"]))[:300]
    x = torch.nn.functional.normalize(torch.as_tensor(d["images"][idx]).flatten(1).double() / 255.0, dim=1)
    ours = DenseLinkage(method="average").initial_labels(None, x, 20, 0)
    theirs = AgglomerativeClustering(n_clusters=20, linkage="average").fit_predict(x.numpy())
    assert ours.max() + 1 == 20
    assert nmi(theirs, ours) == 1.0  # the same partition


def test_ac_link_recipe_on_coil20_gives_the_papers_figure(runner, data_dir, tmp_path):
    result = runner.invoke(app, ["run", "recipes/ac_link_coil20.yaml", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "NMI 0.512" in result.output  # the paper's AC-Link on COIL-20: 0.512


def test_refuses_more_samples_than_max_samples(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "recipes/ac_link_usps.yaml", "--set", f"data={usps_subset}",
                                 "--set", "initializer.max_samples=500", "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: initializer.max_samples: dense_linkage builds all 179,700 pairwise distances of 600 samples "
        "(1 MB), above max_samples = 500; raise it if the memory is there, or use the kNN-graph version: "
        "initializer: path_integral, linkage: average")
