"""Every shipped recipe loads, validates and runs one short period on a small real subset.

FRGC and YTF are not on this machine: their recipes run on a small ``data4torch.h5`` written
here in the layout of the authors' released files (float ``data`` N×C×H×W, 1-based ``labels``),
found through ``--data-dir`` exactly as a user's download would be.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from jule_kit.cli import app
from jule_kit.paths import shipped_recipes
from jule_kit.recipe import load_recipe

from conftest import real_data_dir

RECIPES = [p for p in shipped_recipes() if p.stem != "cluster_folder"]  # a folder of images: tests/test_own_images.py
NOT_HERE = {"frgc": (3, 32, 32, 20), "ytf": (3, 55, 55, 41)}  # C, H, W, classes of the authors' files
SUBSET = {"coil100": 200, "coil20": 100}  # 100 classes: two images of each; coil20 is 128×128


def authors_h5(folder: Path, name: str) -> None:
    c, h, w, classes = NOT_HERE[name]
    rng = np.random.default_rng(0)
    n = classes * 8
    centres = rng.uniform(0, 255, size=(classes, c, h, w))
    labels = np.repeat(np.arange(classes), 8)
    data = np.clip(centres[labels] + rng.normal(0, 20, size=(n, c, h, w)), 0, 255).astype(np.float32)
    (folder / name).mkdir(parents=True)
    with h5py.File(folder / name / "data4torch.h5", "w") as f:
        f["data"] = data
        f["labels"] = (labels + 1).astype(np.float64)  # the authors' files count classes from 1


def test_every_dataset_of_the_paper_has_each_recipe():
    names = {p.stem for p in shipped_recipes()}
    for dataset in ("coil20", "coil100", "usps", "mnist_test", "mnist_full", "umist", "frgc", "cmu_pie", "ytf"):
        for method in ("jule", "kmeans", "ac_link", "ac_gdl"):
            assert f"{method}_{dataset}" in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_one_short_period(path: Path, runner, tmp_path):
    recipe = load_recipe(path, [])
    dataset = recipe["data"]["name"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if dataset in NOT_HERE:
        authors_h5(data_dir, dataset)
    subset = SUBSET.get(dataset, 200)
    out = tmp_path / "run"
    args = ["run", str(path), "--data-dir", str(data_dir), "--device", "cpu", "--out", str(out), "--quiet",
            "--set", "train.epochs=1", "--set", "train.max_periods=1"]
    if dataset != "digits" and dataset not in NOT_HERE:
        args += ["--set", f"data.subset={subset}"]
        assert (real_data_dir() / f"{dataset}.npz").exists(), f"{dataset} missing from {real_data_dir()}"
    if recipe["clusterer"]["name"] == "kmeans_reassign":
        args += ["--set", f"clusterer.k={min(recipe['clusterer']['k'], subset // 4)}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == dataset
    assert 0.0 <= summary["nmi"] <= 1.0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["period"] for m in metrics] == [0, "final"]
    if dataset in NOT_HERE:  # the h5's classes are well separated: a working pipeline finds them
        assert summary["n_clusters"] == NOT_HERE[dataset][3]
        assert summary["nmi"] > 0.8
