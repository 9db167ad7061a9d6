"""The command line: recipes, plugins, runs and the bad-input contract (one line, exit 2)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jule_kit.cli import app

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def one_line_error(result, *fragments: str) -> str:
    """Assert exit code 2, a single-line message without traceback, containing ``fragments``."""
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def write_recipe(tmp_path: Path, body: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


# -- plugins ----------------------------------------------------------------------------------


def test_plugins_json_lists_every_kind(runner):
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"backbone", "affinity", "initializer", "linkage", "clusterer", "loss"}
    gdl = next(r for r in rows if r["name"] == "gdl")
    assert gdl["distribution"] == "julekit" and gdl["version"]
    assert gdl["settings"]["update"]["default"] == "exact"


def test_plugins_pattern_filter(runner):
    result = runner.invoke(app, ["plugins", "--json", "knn*"])
    assert [r["name"] for r in json.loads(result.output)] == ["knn_gaussian"]


def _install_example(target: Path) -> Path:
    src = target / "src"
    shutil.copytree(REPO / "tests" / "plugin_example", src)
    site = target / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(site), str(src)],
        check=True, capture_output=True,
    )
    return site


def _julekit(args: list[str], pythonpath: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(pythonpath), **env}
    full_env.pop("JULEKIT_LOAD_PLUGINS", None) if "JULEKIT_LOAD_PLUGINS" not in env else None
    return subprocess.run([sys.executable, "-m", "jule_kit.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO)


def test_third_party_plugin_is_listed_and_runs_from_a_recipe(tmp_path, data_dir):
    site = _install_example(tmp_path)
    listed = _julekit(["plugins", "--json"], site)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "single_link")
    assert (row["kind"], row["distribution"], row["version"]) == ("linkage", "julekit-single-link", "0.2.0")

    out = tmp_path / "run"
    ran = _julekit(["run", "recipes/ac_gdl_coil20.yaml", "--set", "linkage=single_link", "--out", str(out),
                    "--data-dir", str(data_dir), "--quiet"], site)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"]["linkage"] == {"name": "single_link"}
    assert summary["n_clusters"] == 20 and summary["nmi"] > 0.5

    # JULEKIT_LOAD_PLUGINS restricts third-party loading to the listed distributions
    hidden = _julekit(["plugins", "--json"], site, JULEKIT_LOAD_PLUGINS="")
    assert "single_link" not in {r["name"] for r in json.loads(hidden.stdout)}
    shown = _julekit(["plugins", "--json"], site, JULEKIT_LOAD_PLUGINS="julekit-single-link")
    assert "single_link" in {r["name"] for r in json.loads(shown.stdout)}


def install_plugin_module(target: Path, distribution: str, module: str, source: str) -> Path:
    """pip-install a one-module plugin distribution (entry point = the module) into ``target/site``."""
    pkg = target / "src"
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(source)
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{distribution}"\nversion = "1.0"\n'
        f'[project.entry-points.julekit]\n{module} = "{module}"\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n'
    )
    site = target / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(pkg)], check=True, capture_output=True)
    return site


def test_broken_plugin_names_its_distribution(tmp_path):
    site = install_plugin_module(tmp_path, "julekit-broken", "broken_plugin", "import not_a_module_anywhere\n")
    result = _julekit(["plugins"], site)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "julekit-broken" in result.stderr and "not_a_module_anywhere" in result.stderr


# -- recipes ----------------------------------------------------------------------------------


def test_recipes_lists_shipped_recipes(runner):
    result = runner.invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "jule_usps" in result.output and "quickstart_digits" in result.output
    assert "_jule" not in result.output.replace("jule_", "")


def test_every_shipped_recipe_validates(runner):
    for path in sorted(RECIPES.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, (path, result.output)
        resolved = yaml.safe_load(result.output)
        assert resolved["affinity"]["name"] == "knn_gaussian"


def test_validate_applies_overrides_and_extends(runner, tmp_path):
    base = write_recipe(tmp_path, {"extends": str(RECIPES / "_jule.yaml"), "data": "usps",
                                   "linkage": {"name": "gdl", "update": "fast"}}, "base.yaml")
    child = write_recipe(tmp_path, {"extends": base.name, "seed": 3, "clusterer": {"name": "agglomerative", "k_c": 3}})
    result = runner.invoke(app, ["validate", str(child), "--set", "clusterer.lam=0.5", "--set", "data=some/file.npz"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["seed"] == 3
    assert resolved["linkage"] == {"name": "gdl", "update": "fast", "size_norm": "source",
                                   "compiled": True}  # inherited settings kept
    assert resolved["clusterer"]["k_c"] == 3 and resolved["clusterer"]["lam"] == 0.5
    assert resolved["clusterer"]["eta"] == 0.9  # default made explicit
    assert resolved["data"]["name"] == "some/file.npz"


def test_switching_plugin_drops_the_old_settings(runner):
    result = runner.invoke(app, ["validate", str(RECIPES / "jule_usps.yaml"), "--set", "initializer=singletons"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["initializer"] == {"name": "singletons"}


# -- bad input ----------------------------------------------------------------------------


def test_unknown_recipe_key(runner, tmp_path):
    path = write_recipe(tmp_path, {"data": "usps", "linkgae": "gdl"})
    one_line_error(runner.invoke(app, ["validate", str(path)]), str(path), "'linkgae'", "did you mean 'linkage'")


def test_unknown_plugin_setting(runner, tmp_path):
    path = write_recipe(tmp_path, {"extends": str(RECIPES / "_jule.yaml"), "linkage": {"name": "gdl", "k_c": 3}})
    one_line_error(runner.invoke(app, ["validate", str(path)]), "linkage.k_c", "unknown setting 'k_c'", "update")


def test_wrong_type(runner, tmp_path):
    path = write_recipe(tmp_path, {"extends": str(RECIPES / "_jule.yaml"), "train": {"epochs": "many"}})
    one_line_error(runner.invoke(app, ["validate", str(path)]), "train.epochs", "expected int", "'many'")


def test_bad_setting_value_reports_key(runner, tmp_path):
    path = write_recipe(tmp_path, {"extends": str(RECIPES / "_jule.yaml"), "clusterer": {"eta": 1.5}})
    one_line_error(runner.invoke(app, ["validate", str(path)]), "clusterer", "eta must be in (0, 1]")


def test_unknown_plugin_name_suggests_closest(runner):
    result = runner.invoke(app, ["validate", str(RECIPES / "jule_usps.yaml"), "--set", "linkage=gld"])
    one_line_error(result, "unknown linkage plugin 'gld'", "did you mean 'gdl'", "registered: ", "gdl)")


def test_nonexistent_recipe(runner, tmp_path):
    missing = tmp_path / "nope.yaml"
    one_line_error(runner.invoke(app, ["run", str(missing)]), str(missing), "not found")


def test_unparseable_recipe(runner, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [usps\nseed: 1\n")
    one_line_error(runner.invoke(app, ["validate", str(path)]), str(path), "invalid YAML", "line")


def test_missing_dataset_says_where_it_looked(runner, tmp_path):
    result = runner.invoke(app, ["run", str(RECIPES / "jule_usps.yaml"), "--set", "data=no_such_set",
                                 "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    one_line_error(result, "'no_such_set' not found", str(tmp_path))


def test_unreadable_dataset_file(runner, tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip file")
    result = runner.invoke(app, ["run", str(RECIPES / "jule_usps.yaml"), "--set", f"data={bad}",
                                 "--out", str(tmp_path / "run")])
    one_line_error(result, str(bad))


def test_target_larger_than_samples(runner, usps_subset, tmp_path):
    result = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--set", "clusters=5000", "--out", str(tmp_path / "run")])
    one_line_error(result, "clusters", "5000", "600 samples")


def test_k_s_not_below_n(runner, usps_subset, tmp_path):
    result = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--set", "data.subset=15", "--out", str(tmp_path / "run")])
    one_line_error(result, "affinity.k_s", "20", "15 samples")


def test_existing_run_dir_is_not_overwritten(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--out", str(out)])
    one_line_error(result, str(out), "--force")
    assert (out / "precious.txt").read_text() == "keep me"


# -- real runs ------------------------------------------------------------------------------


def test_ac_gdl_coil20_reaches_paper_nmi(runner, data_dir, tmp_path):
    out = tmp_path / "coil20"
    result = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_coil20.yaml"), "--data-dir", str(data_dir),
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_clusters"] == 20 and summary["n_samples"] == 1440
    assert summary["nmi"] >= 0.93  # the paper's AC-GDL: 0.937


def test_jule_run_writes_summary_and_rerunnable_recipe(runner, usps_subset, tmp_path, threads):
    out = tmp_path / "jule"
    args = ["run", str(RECIPES / "jule_usps.yaml"), "--set", f"data={usps_subset}", "--set", "train.epochs=1",
            "--out", str(out), "--device", "cpu", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "period 0:" in result.output and "NMI" in result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("nmi", "acc", "ari", "n_clusters", "n_samples", "seconds", "device", "recipe"):
        assert key in summary
    assert summary["n_clusters"] == 10 and summary["n_samples"] == 600 and summary["device"] == "cpu"
    assert summary["recipe"]["seed"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["period"] == 0 and rows[-1]["period"] == "final"
    assert all("nmi" in r for r in rows)
    for r in rows[:-1]:  # where each period's time went
        parts = r["seconds_features"] + r["seconds_clustering"] + r["seconds_training"]
        assert 0 <= r["seconds_graph"] <= r["seconds_clustering"] and abs(parts - r["seconds"]) < 0.05, r
    assert rows[0]["seconds_training"] > 0 and "loss" in rows[0]
    # every period's line ends with the run's time left, the clock time it should end at
    line = re.search(r"^period 0: [^\n]*(?:\n(?!period)[^\n]*)*", result.output, re.M).group(0)
    assert re.search(r"s,\s+about\s+\d+\s+s\s+left\s+\(done\s+~\d\d:\d\d\)$", line), line  # wrapped at 80 columns
    with open(out / "assignments.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 600 and {r["cluster"] for r in table} == {str(i) for i in range(10)}

    # the stored recipe runs as is and, with the same seed on CPU, gives the same labels
    again = tmp_path / "again"
    result = runner.invoke(app, ["run", str(out / "recipe.yaml"), "--out", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (again / "assignments.csv").read_text() == (out / "assignments.csv").read_text()


def test_backbone_without_loss_is_a_recipe_error(runner):
    result = runner.invoke(app, ["validate", str(RECIPES / "ac_gdl_usps.yaml"), "--set", "backbone=jule_cnn"])
    one_line_error(result, "loss:", "must choose a loss", "weighted_triplet", "train.epochs: 0")
    result = runner.invoke(app, ["validate", str(RECIPES / "ac_gdl_usps.yaml"), "--set", "backbone=jule_cnn",
                                 "--set", "train.epochs=0"])
    assert result.exit_code == 0, result.output
