"""The study layer: a stored run is reused only when it is the same run (``jule_kit/study.py``).

Shared by ``julekit run --seeds``, ``julekit ablate`` and ``bench/reproduce.py``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jule_kit import __version__
from jule_kit.cli import app
from jule_kit.rundir import RECIPE, SUMMARY, git_commit
from jule_kit.study import EMPTY, FINISHED, INTERRUPTED, StaleRunError, first_difference, look
from test_cli import one_line_error

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
RECIPE_DICT = {"description": "x", "seed": 0, "device": "auto", "data": {"name": "usps", "subset": None},
               "affinity": {"name": "knn_gaussian", "k_s": 20}, "linkage": {"name": "gdl", "update": "exact"}}


def _with(recipe: dict, path: str, value) -> dict:
    out = json.loads(json.dumps(recipe))
    *head, last = path.split(".")
    node = out
    for key in head:
        node = node[key]
    node[last] = value
    return out


def test_first_difference_is_a_dotted_key_with_both_values():
    assert first_difference(RECIPE_DICT, json.loads(json.dumps(RECIPE_DICT))) is None
    assert first_difference(RECIPE_DICT, _with(RECIPE_DICT, "affinity.k_s", 10)) == ("affinity.k_s", 20, 10)
    # description and device do not change what a run computes
    assert first_difference(RECIPE_DICT, _with(_with(RECIPE_DICT, "device", "cuda"), "description", "y")) is None
    newer = _with(RECIPE_DICT, "linkage.alpha", 0.5)  # a setting the stored run did not have
    key, stored, wanted = first_difference(RECIPE_DICT, newer)
    assert key == "linkage.alpha" and wanted == 0.5
    assert first_difference({"data": {"resize": [28, 28]}}, {"data": {"resize": (28, 28)}}) is None


def test_look_reuses_resumes_or_refuses(tmp_path):
    folder = tmp_path / "run"
    assert look(folder, RECIPE_DICT).state == EMPTY
    folder.mkdir()
    (folder / RECIPE).write_text(yaml.safe_dump(RECIPE_DICT))
    assert look(folder, RECIPE_DICT).state == INTERRUPTED
    with pytest.raises(StaleRunError) as stale:  # an interrupted run of other settings is not resumed either
        look(folder, _with(RECIPE_DICT, "linkage.update", "fast"), hint="use another --out")
    assert str(stale.value) == (f'{folder}: holds a run of other settings (linkage.update: "exact" there, '
                                '"fast" now); use another --out')
    (folder / SUMMARY).write_text(json.dumps({"nmi": 0.5, "recipe": RECIPE_DICT}))
    assert look(folder, RECIPE_DICT).state == FINISHED
    assert look(folder, RECIPE_DICT, complete=lambda s: False).state == INTERRUPTED
    (folder / SUMMARY).write_text("{ damaged")
    assert look(folder, RECIPE_DICT).state == INTERRUPTED


def test_a_setting_added_since_the_run_takes_its_default_a_changed_default_does_not(tmp_path):
    from jule_kit.recipe import load_recipe

    wanted = load_recipe(RECIPES / "jule_usps.yaml", [])
    folder = tmp_path / "run"
    folder.mkdir()

    def stored_as(recipe: dict) -> None:
        (folder / SUMMARY).write_text(json.dumps({"nmi": 0.9, "recipe": recipe}))

    older = json.loads(json.dumps(wanted))
    del older["linkage"]["size_norm"]  # saved before linkage.size_norm existed: it ran as its default does
    stored_as(older)
    assert look(folder, wanted).state == FINISHED
    changed = _with(wanted, "clusterer.kc_min_clusters", 0)  # saved under an older default value
    stored_as(changed)
    with pytest.raises(StaleRunError, match=r"clusterer.kc_min_clusters: 0 there, 100 now"):
        look(folder, wanted)
    gone = _with(wanted, "linkage.retired_setting", 1)  # a setting julekit no longer has
    stored_as(gone)
    with pytest.raises(StaleRunError, match=r"linkage.retired_setting: 1 there, absent now"):
        look(folder, wanted)


# -- julekit run --seeds / --resume ------------------------------------------------------------


def test_resume_of_seeds_with_another_stored_recipe_is_one_line(runner, usps_subset, tmp_path):
    out = tmp_path / "seeds"
    made = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                               "--seeds", "2", "--out", str(out), "--quiet"])
    assert made.exit_code == 0, made.output
    # the folder's recipe no longer is the one its seeds ran with (edited, or copied from elsewhere)
    recorded = yaml.safe_load((out / RECIPE).read_text())
    recorded["affinity"]["k_s"] = 10
    (out / RECIPE).write_text(yaml.safe_dump(recorded, sort_keys=False))
    (out / SUMMARY).unlink()
    before = {p: p.read_bytes() for p in out.glob("seed*/*") if p.is_file()}
    result = runner.invoke(app, ["run", "--resume", str(out)])
    one_line_error(result, f"{out / 'seed0'}: holds a run of other settings", "affinity.k_s: 20 there, 10 now")
    assert {p: p.read_bytes() for p in out.glob("seed*/*") if p.is_file()} == before  # nothing overwritten
    assert not (out / SUMMARY).exists()

    # --force on a fresh command overwrites what --out holds instead of refusing
    forced = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--set", "affinity.k_s=10", "--seeds", "1", "--out", str(out), "--force", "--quiet"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "seed0" / SUMMARY).read_text())["recipe"]["affinity"]["k_s"] == 10


# -- bench/reproduce.py ------------------------------------------------------------------------


def _reproduce(tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "bench" / "reproduce.py"), "--datasets", "usps", "--methods", "ac_gdl",
           "--seeds", "1", "--device", "cpu", "--out", str(tmp_path / "runs"), "--recipes", str(tmp_path / "recipes"),
           "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "RESULTS.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "JULEKIT_LOAD_PLUGINS"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _row(tmp_path: Path) -> str:
    return next(line for line in (tmp_path / "RESULTS.md").read_text().splitlines()
                if line.startswith("| usps | AC-GDL |"))


def test_reproduce_reruns_a_stale_cell_and_keeps_the_old_one_aside(usps_subset, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(usps_subset, tmp_path / "data" / "usps.npz")  # a 600-image USPS: a run of seconds
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "ac_gdl_usps.yaml"
    body = yaml.safe_load((RECIPES / "ac_gdl_usps.yaml").read_text())
    body["extends"] = str(RECIPES / body["extends"])
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    cell = tmp_path / "runs" / "ac_gdl_usps"

    first = _reproduce(tmp_path)
    old = json.loads((cell / SUMMARY).read_text())
    assert old["recipe"]["affinity"]["k_s"] == 20
    row = _row(tmp_path)
    assert f"**{old['nmi_mean']:.3f} ± {old['nmi_std']:.3f}**" in row
    commit = git_commit()
    assert (f"| {__version__} @ {commit} |" if commit else f"| {__version__} |") in row
    assert "reused" not in first.stdout

    again = _reproduce(tmp_path)  # nothing changed: the cell is quoted as it is
    assert "ac_gdl_usps: reused (1 seeds)" in again.stdout
    assert not list(cell.parent.glob("*.stale-*"))

    body["affinity"]["k_s"] = 10  # the recipe's default changes after the cell was made
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    stale = _reproduce(tmp_path)
    [aside] = cell.parent.glob("ac_gdl_usps.stale-*")
    line = next(line for line in stale.stdout.splitlines() if "other settings" in line)
    assert line.startswith(f"{cell}: holds a run of other settings (affinity.k_s: 20 there, 10 now)")
    assert f"set aside as {aside.name}" in line
    assert json.loads((aside / SUMMARY).read_text()) == old  # the old cell kept, untouched
    new = json.loads((cell / SUMMARY).read_text())
    assert new["recipe"]["affinity"]["k_s"] == 10 and (cell / "seed0" / SUMMARY).exists()
    assert f"**{new['nmi_mean']:.3f} ± {new['nmi_std']:.3f}**" in _row(tmp_path)
    assert not np.isclose(new["nmi_mean"], old["nmi_mean"]), "k_s 10 and 20 should cluster differently"


def test_reproduce_keeps_the_rows_whose_runs_are_not_on_this_machine(tmp_path):
    """A fresh checkout has no runs/: --table-only must not wipe the measured rows of the table."""
    results = tmp_path / "RESULTS.md"
    measured = ("| usps | JULE-RC (SF 0.873; paper 0.858) | **0.897 ± 0.020** | 3 | 0.913 | -0.016 | 0.919 ± 0.063 | "
                "0.891 | 1031.2 | cpu | 0.1.0 @ 9b228fd | `julekit run recipes/jule_usps.yaml --seeds 3` |")
    results.write_text(f"# Results\n\nintro\n\n<!-- reproduce:begin -->\n{measured}\n"
                       "| usps | K-means | not run yet | | 0.447 | | | | | | | |\n<!-- reproduce:end -->\n\nafter\n")
    cmd = [sys.executable, str(REPO / "bench" / "reproduce.py"), "--table-only", "--out", str(tmp_path / "runs"),
           "--results", str(results)]
    for _ in range(2):  # twice: a kept row stays kept, marked once
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert measured.replace("9b228fd |", "9b228fd (kept) |") in text
    assert "| usps | K-means | not run yet |" in text and text.startswith("# Results\n\nintro") and "after" in text
