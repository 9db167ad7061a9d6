"""docs/ARCHITECTURE.md holds: its example built-in works as written, and the files it names exist."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit import registry as registry_module
from jule_kit.data import load_dataset
from jule_kit.engine import Experiment
from jule_kit.errors import RecipeError
from jule_kit.recipe import load_recipe
from jule_kit.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ARCHITECTURE.md"


def example_module(tmp_path: Path):
    """The doc's example plugin file, imported as a module of its own."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "ARCHITECTURE.md should hold one python example"
    source = "\n".join(line[3:] if line.startswith("   ") else line for line in blocks[0].splitlines())
    path = tmp_path / "mutual_knn.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("julekit_doc_mutual_knn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def with_example(tmp_path, monkeypatch):
    """The registry of the installed plugins plus the doc's example, as if its entry point were added."""
    pm = registry_module.plugin_manager()
    pm.register(example_module(tmp_path), name="julekit")
    monkeypatch.setattr(registry_module, "_registry", registry_module.Registry(pm))


def test_the_documented_builtin_over_clusters_real_images(with_example, data_dir):
    data = load_dataset("usps", data_dir=str(data_dir), subset=1000, seed=0)
    affinity = registry_module.get_registry().get("affinity", "knn_gaussian").create({})
    features = affinity.prepare(torch.as_tensor(data.images).flatten(1).float() / 255.0)
    initializer = registry_module.get_registry().get("initializer", "mutual_knn").create({"max_size": 30})
    labels = initializer.initial_labels(affinity.build(features), features, 10, 0)
    sizes = np.bincount(labels)
    assert 100 < len(sizes) < 700 and sizes.max() <= 30 and (sizes > 1).sum() > 50


def test_the_documented_builtin_runs_in_a_recipe(with_example, data_dir, tmp_path):
    nmi = {}
    for name in ("mutual_knn", "path_integral"):
        recipe = load_recipe(REPO / "recipes" / "ac_gdl_usps.yaml", ["data.subset=1000", f"initializer={name}"])
        result = Experiment(recipe, RunDir.create(tmp_path / name), data_dir=str(data_dir)).run()
        assert result.summary["n_clusters"] == 10
        nmi[name] = result.summary["nmi"]
    # AC-GDL from the example's clusters finds the digits about as well as from the paper's (0.63 / 0.62)
    assert nmi["mutual_knn"] > nmi["path_integral"] - 0.05 and nmi["mutual_knn"] > 0.55


def test_the_documented_builtin_has_checked_settings(with_example):
    with pytest.raises(RecipeError, match="initializer.k"):
        load_recipe(REPO / "recipes" / "ac_gdl_usps.yaml", ["initializer=mutual_knn", "initializer.k=x"])


def test_every_path_the_page_names_exists():
    named = set(re.findall(r"`((?:jule_kit|plugins|recipes|tests|docs|bench)/[\w./<>*-]*)`", DOC.read_text()))
    concrete = {p for p in named if "<" not in p and "*" not in p and not p.endswith("mutual_knn.py")}
    assert concrete, "the page should name the files it describes"
    missing = sorted(p for p in concrete if not (REPO / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"
