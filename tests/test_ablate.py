"""``julekit ablate``: variants, seeds, reuse of finished runs, and the summary tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from jule_kit.ablate import make_variants, parse_swaps
from jule_kit.cli import app
from jule_kit.engine import Experiment

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def test_variants_are_baseline_plus_the_cartesian_product():
    swaps = parse_swaps({"linkage": ["average,gdl"], "initializer": ["kmeans"], "loss": []})
    assert swaps == {"initializer": ["kmeans"], "linkage": ["average", "gdl"]}  # KINDS order
    variants = make_variants(swaps)
    assert [v.name for v in variants] == ["baseline", "initializer=kmeans+linkage=average",
                                          "initializer=kmeans+linkage=gdl"]
    assert variants[1].overrides == ("initializer=kmeans", "linkage=average")
    assert make_variants(parse_swaps({"backbone": ["timm:resnet18"]}))[1].dirname == "backbone=timm_resnet18"


def test_ablate_linkage_on_coil20_and_reuse(runner, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "abl"
    args = ["ablate", "--linkage", "average", "--recipe", str(RECIPES / "ac_gdl_coil20.yaml"), "--seeds", "2",
            "--out", str(out), "--data-dir", str(data_dir), "--device", "cpu"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "run 1/4: ac_gdl_coil20 baseline seed 0" in result.output
    assert "run 4/4: ac_gdl_coil20 linkage=average seed 1" in result.output
    for name in ("summary.md", "summary.csv", "summary.json", "summary.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for variant in ("baseline", "linkage=average"):
        for k in (0, 1):
            assert (out / "ac_gdl_coil20" / variant / f"seed{k}" / "summary.json").is_file()

    data = json.loads((out / "summary.json").read_text())
    assert len(data["runs"]) == 4
    assert {r["seed"] for r in data["runs"]} == {0, 1}  # the recipe's seed 0, + 0 and + 1
    stored = json.loads((out / "ac_gdl_coil20" / "linkage=average" / "seed1" / "summary.json").read_text())
    assert stored["recipe"]["seed"] == 1 and stored["recipe"]["linkage"] == {"name": "average"}
    agg = {a["variant"]: a for a in data["aggregate"]}
    gdl, link = agg["baseline"], agg["linkage=average"]
    assert gdl["runs"] == link["runs"] == 2 and gdl["dataset"] == "coil20"
    assert gdl["nmi_mean"] >= 0.93  # the paper's AC-GDL on raw COIL-20: 0.937
    assert link["nmi_mean"] < gdl["nmi_mean"]  # average linkage is worse (paper's AC-Link: 0.512)

    md = (out / "summary.md").read_text()
    for a in (gdl, link):
        assert f"{a['nmi_mean']:.3f} ± {a['nmi_std']:.3f}" in md
        assert f"{a['acc_mean']:.3f} ± {a['acc_std']:.3f}" in md
    assert "| recipe | dataset | baseline | linkage=average |" in md
    assert "## ACC" in md and "## Time" in md
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert list(rows[0])[:8] == ["recipe", "dataset", "variant", "seed", "nmi", "acc", "ari", "seconds"]
    assert {(r["variant"], r["seed"]) for r in rows} == {(v, s) for v in ("baseline", "linkage=average") for s in "01"}

    # the same command again runs nothing: every run is reused
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed*/summary.json")}
    calls = []
    monkeypatch.setattr(Experiment, "run", lambda self, *a, **k: calls.append(self) or pytest.fail("re-ran"))
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert calls == [] and again.output.count("reused") == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed*/summary.json")} == mtimes
    assert json.loads((out / "summary.json").read_text())["aggregate"] == data["aggregate"]

    # other settings into the same folder: refused, nothing overwritten
    stale = runner.invoke(app, [*args, "--set", "affinity.k_s=10"])
    assert stale.exit_code == 2 and "other settings" in stale.output and "affinity" in stale.output


def test_ablate_kmeans_initializer_and_timm_backbone_end_to_end(runner, usps_subset, tmp_path):
    out = tmp_path / "abl"
    result = runner.invoke(app, ["ablate", "--initializer", "kmeans", "--backbone", "timm:resnet18",
                                 "--recipe", "jule_usps", "--set", f"data={usps_subset}", "--set", "data.subset=300",
                                 "--set", "train.epochs=1", "--out", str(out), "--device", "cpu"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads((out / "summary.json").read_text())
    variants = [a["variant"] for a in data["aggregate"]]
    assert variants == ["baseline", "backbone=timm:resnet18+initializer=kmeans"]
    run = out / "jule_usps" / "backbone=timm_resnet18+initializer=kmeans" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recipe"]["backbone"]["name"] == "timm" and summary["recipe"]["backbone"]["model"] == "resnet18"
    assert summary["recipe"]["initializer"]["name"] == "kmeans"
    assert summary["n_samples"] == 300 and summary["n_clusters"] == 10
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["clusters"] == 75  # the kmeans over-clustering: round(300 / 4)
    assert any("loss" in r for r in rows)  # the timm network was trained
    assert all(0 <= r["nmi"] <= 1 for r in data["runs"])


def test_ablate_bad_input_is_one_line(runner, tmp_path):
    def one_line(result, *fragments):
        text = result.output.strip()
        assert result.exit_code == 2, text
        assert "Traceback" not in text and len(text.splitlines()) == 1, text
        for f in fragments:
            assert f in text, (f, text)

    recipe = str(RECIPES / "ac_gdl_coil20.yaml")
    one_line(runner.invoke(app, ["ablate", "--recipe", recipe, "--linkage", "averag", "--out", str(tmp_path / "a")]),
             "unknown linkage plugin 'averag'", "did you mean 'average'")
    one_line(runner.invoke(app, ["ablate", "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "a")]),
             "not found")
    one_line(runner.invoke(app, ["ablate", "--recipe", recipe, "--seeds", "0", "--out", str(tmp_path / "a")]),
             "--seeds")
    one_line(runner.invoke(app, ["ablate", "--recipe", recipe, "--linkage", "average,", "--out", str(tmp_path / "a")]),
             "--linkage")
    one_line(runner.invoke(app, ["ablate", "--recipe", recipe, "--set", "data=no_such_set",
                                 "--data-dir", str(tmp_path), "--out", str(tmp_path / "a")]), "no_such_set", "not found")
    assert not (tmp_path / "a").exists()  # nothing ran


def test_ablate_default_recipes_are_the_jule_ones():
    from jule_kit.ablate import default_recipes

    names = [p.stem for p in default_recipes()]
    assert names and all(n.startswith("jule_") for n in names) and "jule_usps" in names


def test_shipped_baseline_recipes_validate():
    for prefix, linkage in (("ac_link", "average"), ("kmeans", "gdl")):
        paths = sorted(RECIPES.glob(f"{prefix}_*.yaml"))
        assert {p.stem.split("_", 2 if prefix == "ac_link" else 1)[-1] for p in paths} >= {
            "coil20", "coil100", "usps", "mnist_test", "mnist_full", "umist", "cmu_pie", "frgc", "ytf"}
        for path in paths:
            from jule_kit.recipe import load_recipe

            r = load_recipe(path)
            assert r["backbone"] is None
            if prefix == "ac_link" and path.stem != "ac_link_mnist_full":  # all pairs: 19.6 GB at 70k
                assert r["initializer"]["name"] == "dense_linkage" and r["initializer"]["method"] == "average"
            else:
                assert r["linkage"]["name"] == linkage
            if prefix == "kmeans":
                assert r["initializer"]["n_clusters"] == "target" and r["clusterer"]["eta"] == 1.0
            assert yaml.safe_load(path.read_text())["extends"] == "_ac_gdl.yaml"
