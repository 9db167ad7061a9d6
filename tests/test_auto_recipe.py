"""The `jule` recipe: settings derived from the data by the paper's per-dataset rules (jule_kit/auto_recipe.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from jule_kit.auto_recipe import derive_rules, derive_settings, gamma_for, merge_periods
from jule_kit.cli import app
from jule_kit.data import load_dataset, summarize_dataset
from jule_kit.errors import DataError
from jule_kit.metrics import nmi
from jule_kit.paths import shipped_recipes
from jule_kit.recipe import load_recipe, resolve_recipe

from conftest import real_data_dir

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
JULE = RECIPES / "jule.yaml"

# the paper's datasets: N, (C, H, W), K (ALGORITHMS.md 2.3) -> resize, blocks, pool, eta
PAPER = {
    "mnist_full": ((70000, (1, 28, 28), 10), (None, 2, [True, False], 0.9)),
    "mnist_test": ((10000, (1, 28, 28), 10), (None, 2, [True, False], 0.9)),
    "usps": ((11000, (1, 16, 16), 10), (None, 1, None, 0.9)),
    "coil20": ((1440, (1, 128, 128), 20), (None, 4, None, 0.9)),
    "coil100": ((7200, (3, 128, 128), 100), (None, 4, None, 0.9)),
    "umist": ((575, (1, 112, 92), 20), ([64, 64], 3, None, 0.2)),  # the paper: 3 blocks (padding 2) at 112x92
    "frgc": ((2462, (3, 32, 32), 20), (None, 2, None, 0.9)),  # the paper: 0.2, as a face set
    "cmu_pie": ((2856, (1, 32, 32), 68), (None, 2, None, 0.2)),
    "ytf": ((10000, (3, 55, 55), 41), ([32, 32], 2, None, 0.9)),  # the paper: 0.2, as a face set
}
NOT_STORED = {"frgc", "ytf"}  # the authors' files are not on the data path: their paper shapes stand in

# Where the rules and a tuned recipe part, and why (README "A recipe from your data"). Each entry is
# the derived value; the test checks that it differs from the tuned one, so the list stays true.
DISAGREE = {
    # The stored UMist is 32x32, for which the paper's net is 2 blocks (CMU-PIE, FRGC); jule_umist keeps the
    # paper's UMist net (3 blocks, padding 2), made for the 112x92 originals.
    ("umist", "backbone.blocks"): 2,
    # The paper picks 0.2 for face sets as such; FRGC (123 images per class) and YTF (244) have as many
    # images per cluster as the object sets, and nothing in N, K or the image size tells a face from an object.
    ("frgc", "clusterer.eta"): 0.9,
    ("ytf", "clusterer.eta"): 0.9,
    # and the loss's positive weight goes with eta
    ("frgc", "loss.gamma"): 1.0,
    ("ytf", "loss.gamma"): 1.0,
}


def jule_recipes() -> list[Path]:
    return [p for p in shipped_recipes() if p.stem.startswith("jule_")]


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER)
def test_rules_on_the_papers_shapes(name):
    (n, shape, k), (resize, blocks, pool, eta) = PAPER[name]
    derived = derive_settings(n, shape, k)
    assert derived["data"].get("resize") == resize
    assert derived["data"]["channels"] == shape[0]  # grey stays grey, colour stays RGB
    assert (derived["backbone"]["blocks"], derived["backbone"]["pool"]) == (blocks, pool)
    assert derived["clusterer"]["eta"] == eta and derived["clusters"] == k
    assert derived["loss"]["gamma"] == (1.0 if eta == 0.9 else 2.0)


def test_input_size_rule_shrinks_to_the_cnns_sizes():
    side = {s: (derive_settings(1000, (1, s, s), 10)["data"].get("resize"), derive_settings(1000, (1, s, s), 10)
                ["backbone"]["blocks"]) for s in (8, 15, 16, 20, 27, 28, 31, 32, 48, 63, 64, 100, 128, 500)}
    assert side == {8: (None, 1), 15: (None, 1), 16: (None, 1), 20: ([16, 16], 1), 27: ([16, 16], 1),
                    28: (None, 2), 31: ([28, 28], 2), 32: (None, 2), 48: ([32, 32], 2), 63: ([32, 32], 2),
                    64: (None, 3), 100: ([64, 64], 3), 128: (None, 4), 500: ([128, 128], 4)}
    # the smaller side decides, and the input is square
    assert derive_settings(1000, (3, 480, 640), 10)["data"]["resize"] == [128, 128]
    assert derive_settings(1000, (1, 8, 12), 10)["data"]["resize"] == [8, 8]
    with pytest.raises(DataError, match="4x4 pixels are too small"):
        derive_settings(1000, (1, 4, 4), 10)


def test_eta_rule_keeps_the_papers_number_of_periods():
    # eta 0.9 leaves at least two merge periods only from N/K = 60 (n0 ~ N/6): below it, 0.2
    assert derive_settings(600, (1, 16, 16), 10)["clusterer"]["eta"] == 0.9
    assert derive_settings(599, (1, 16, 16), 10)["clusterer"]["eta"] == 0.2
    assert merge_periods(600, 10, 0.9) == 1 and merge_periods(601, 10, 0.9) == 2
    # the paper's sets: 2-4 periods at 0.9; UMist and CMU-PIE 1 at 0.9, 8-9 at 0.2
    assert [merge_periods(n, k, 0.9) for n, k in ((1440, 20), (7200, 100), (11000, 10), (70000, 10))] == [2, 2, 3, 4]
    assert [merge_periods(n, k, 0.9) for n, k in ((575, 20), (2856, 68))] == [1, 1]
    assert [merge_periods(n, k, 0.2) for n, k in ((575, 20), (2856, 68))] == [8, 9]


def test_loss_weight_follows_eta_the_rules_or_the_users():
    # the authors' code's gamma 1 with eta 0.9, the paper's 2 with its face setting 0.2
    assert derive_settings(600, (1, 16, 16), 10)["loss"]["gamma"] == 1.0
    assert derive_settings(599, (1, 16, 16), 10)["loss"]["gamma"] == 2.0
    assert gamma_for(0.9) == gamma_for(0.6) == 1.0 and gamma_for(0.2) == gamma_for(0.5) == 2.0
    rules = {r.key: r for r in derive_rules(599, (1, 16, 16), 10, eta=0.9)}
    assert rules["clusterer.eta"].value == 0.2 and rules["loss.gamma"].value == 1.0  # the user's eta decides


def test_mixed_images_are_converted_by_rule():
    rules = {r.key: r for r in derive_rules(100, (3, 16, 16), 5, mixed_sizes=True, mixed_modes=True)}
    assert rules["data.resize"].value == [16, 16] and "several sizes" in rules["data.resize"].rule
    assert rules["data.channels"].value == 3 and rules["data.channels"].rule == \
        "grey and colour images together: all read as RGB"


def test_data_summary_is_what_loading_gives(data_dir, tmp_path):
    """The rules read N, classes and shape from headers: they must be those of the images a run loads."""
    for i in range(9):
        path = tmp_path / "pics" / f"class_{i % 3}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12 + i, 20, 3) if i == 4 else (12 + i, 20), 9 * i, np.uint8)).save(path)  # one colour
    (tmp_path / "pics" / "class_0" / "broken.png").write_bytes(b"not a png")
    cases = [("digits", dict(subset=50, seed=1)), ("usps", dict(subset=30, seed=2, resize=[8, 8], channels=3))]
    cases += [(str(tmp_path / "pics"), dict(subset=3, seed=s, resize=[10, 10])) for s in range(3)]  # mostly all grey
    cases.append((str(tmp_path / "pics"), {}))
    for spec, options in cases:
        summary = summarize_dataset(spec, data_dir=data_dir, **options)
        if "resize" not in options and summary.mixed_sizes:
            assert (summary.shape, summary.mixed_modes) == ((3, 16, 20), True)  # median size; grey and colour
            options = {"resize": list(summary.shape[1:])}
        loaded = load_dataset(spec, data_dir=data_dir, **options)
        assert (summary.n, summary.n_classes, summary.shape) == (loaded.n, loaded.n_classes, loaded.shape), spec


def test_derived_settings_match_the_tuned_recipes(data_dir):
    """Each jule_<dataset> recipe against the rules on the stored data's shape (paper shape where not stored)."""
    recipes = jule_recipes()
    assert {p.stem[len("jule_"):] for p in recipes} == set(PAPER)
    seen = set()
    for path in recipes:
        tuned = load_recipe(path)
        name = tuned["data"]["name"]
        if name in NOT_STORED:
            n, shape, k = PAPER[name][0]
        else:
            stored = summarize_dataset(name, data_dir=data_dir)
            n, shape, k = stored.n, stored.shape, stored.n_classes
        derived = derive_settings(n, shape, k)
        for key in ("backbone.blocks", "backbone.pool", "clusterer.eta", "loss.gamma"):
            kind, setting = key.split(".")
            mine, theirs = derived[kind][setting], tuned[kind][setting]
            if (name, key) in DISAGREE:
                seen.add((name, key))
                assert mine == DISAGREE[name, key] and mine != theirs, (name, key, mine, theirs)
            else:
                assert mine == theirs, (name, key, mine, theirs)
        if name not in NOT_STORED:
            assert derived["data"].get("resize") is None  # every stored copy is already at a size the CNN takes
    assert seen == set(DISAGREE)


def test_the_derived_recipe_runs_exactly_the_tuned_one_where_the_rules_agree(data_dir):
    """On every stored dataset where the rules agree with jule_<dataset> (all but UMist), the derived
    recipe differs only in its description and in keys that restate the data (channels as stored, K =
    the label classes): the same run, so the same NMI, seed for seed."""
    restate = {"description", "clusters", "derive"}
    checked = []
    for path in jule_recipes():
        tuned = load_recipe(path, data_dir=data_dir)
        name = tuned["data"]["name"]
        if name in NOT_STORED or any(n == name for n, _ in DISAGREE) or name == "umist":
            continue
        derived = load_recipe(RECIPES / "jule.yaml", [f"data={name}"], data_dir=data_dir)
        stored = summarize_dataset(name, data_dir=data_dir)
        assert derived["clusters"] == stored.n_classes and tuned["clusters"] is None
        assert derived["data"] == {**tuned["data"], "channels": stored.shape[0]} and tuned["data"]["channels"] is None
        differ = {k for k in set(tuned) | set(derived) if k not in restate and k != "data" and tuned.get(k) != derived.get(k)}
        assert not differ, (name, {k: (tuned.get(k), derived.get(k)) for k in differ})
        checked.append(name)
    assert sorted(checked) == ["cmu_pie", "coil100", "coil20", "mnist_full", "mnist_test", "usps"]


def test_quickstart_digits_is_what_the_rules_give():
    tuned = load_recipe(RECIPES / "quickstart_digits.yaml")
    derived = load_recipe(JULE, ["data=digits"])
    for kind, key in (("backbone", "blocks"), ("backbone", "pool"), ("clusterer", "eta"), ("loss", "gamma")):
        assert derived[kind][key] == tuned[kind][key]


# -- the recipe and the command line ----------------------------------------------------------


def test_set_overrides_win_over_the_rules(data_dir):
    recipe = load_recipe(JULE, ["data=usps", "clusterer.eta=0.5", "backbone.blocks=2"], data_dir=data_dir)
    assert recipe["clusterer"]["eta"] == 0.5 and recipe["backbone"]["blocks"] == 2
    assert recipe["loss"]["gamma"] == 2.0  # the weight follows the user's eta, nearer the face setting
    assert load_recipe(JULE, ["data=usps", "loss.gamma=3"], data_dir=data_dir)["loss"]["gamma"] == 3.0
    found = resolve_recipe(JULE, ["data=usps", "backbone=null"], data_dir=data_dir)
    assert found.recipe["backbone"] is None  # AC-GDL on raw pixels: no CNN rule applies
    assert not any(s.key.startswith("backbone") for s in found.derivation.settings)
    # another backbone key leaves the depth to the rules (8x8 digits would not fit the default 2 blocks)
    tuned_init = load_recipe(JULE, ["data=usps", "backbone.bn_init=torch7"], data_dir=data_dir)
    assert tuned_init["backbone"]["blocks"] == 1 and tuned_init["backbone"]["bn_init"] == "torch7"
    # a resize given by the user is the input size the rules see
    resized = load_recipe(JULE, ["data=usps", "data.resize=[28,28]"], data_dir=data_dir)
    assert resized["backbone"]["pool"] == [True, False]


def test_validate_jule_on_a_stored_dataset_prints_the_rules(runner, data_dir, tmp_path):
    result = runner.invoke(app, ["validate", "jule", "--data", "usps", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == ("# JULE on usps, settings derived from 11000 images of 1x16x16 pixels and K = 10: "
                        "16x16 grey input, 1 CNN block, eta 0.9")
    assert "# backbone.blocks: 1  <- 16x16 input: the paper's net for USPS at 16x16" in lines
    assert "# clusterer.eta: 0.9  <- N/K = 1100 >= 60: the paper's digit/object setting; about 3 merge periods" in lines
    assert "# loss.gamma: 1.0  <- eta 0.9: the authors' code's positive weight" in lines
    assert "# clusters: 10  <- the number of label classes in usps (--clusters K to choose)" in lines
    printed = yaml.safe_load(result.output)
    assert printed["derive"] is False and printed["clusters"] == 10
    assert printed["backbone"]["blocks"] == 1 and printed["clusterer"]["eta"] == 0.9
    # what it prints is a recipe that resolves to itself
    (tmp_path / "derived.yaml").write_text(result.output)
    assert load_recipe(tmp_path / "derived.yaml") == printed


def test_run_jule_on_a_stored_dataset(runner, data_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "jule", "--data", "usps", "--data-dir", str(data_dir), "--set",
                                 "data.subset=1000", "--set", "train.epochs=1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "clusters: 10, the number of label classes in usps (--clusters K to choose)" in result.output
    stored = yaml.safe_load((out / "recipe.yaml").read_text())
    assert stored["derive"] is False and stored["clusters"] == 10 and stored["data"]["subset"] == 1000
    assert (stored["backbone"]["blocks"], stored["backbone"]["pool"], stored["clusterer"]["eta"]) == (1, None, 0.9)
    assert load_recipe(out / "recipe.yaml") == stored  # reruns as is
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 1000 and summary["n_clusters"] == 10
    assert summary["nmi"] > 0.6  # one epoch per period on 1000 real USPS digits


def coil_folder(folder: Path, classes: int = 4, per_class: int = 24) -> dict[str, int]:
    """A flat folder of real COIL-100 objects that differ as a user's photos do: half of them 40x40, half
    32x32, and every fourth grey. Returns file name -> object."""
    data = load_dataset("coil100", data_dir=real_data_dir())
    rng = np.random.default_rng(0)
    objects = rng.choice(np.unique(data.labels), size=classes, replace=False)
    picked = np.concatenate([rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False) for c in objects])
    folder.mkdir()
    truth = {}
    for n, i in enumerate(rng.permutation(picked)):
        side = 40 if n % 2 else 32
        image = Image.fromarray(data.images[i].transpose(1, 2, 0)).resize((side, side), Image.Resampling.BILINEAR)
        if n % 4 == 0:
            image = image.convert("L")
        image.save(folder / f"img_{n:03d}.png")
        truth[f"img_{n:03d}.png"] = int(data.labels[i])
    return truth


def test_run_jule_on_an_image_folder(runner, tmp_path):
    folder = tmp_path / "my photos"
    truth = coil_folder(folder)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "jule", "--data", str(folder), "--clusters", "4", "--set", "train.epochs=1",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = yaml.safe_load((out / "recipe.yaml").read_text())
    # 40x40 and 32x32 (median 36): all resized to 32x32; grey and colour together: all RGB
    assert stored["data"] == {"name": str(folder), "subset": None, "subset_seed": 0, "resize": [32, 32], "channels": 3}
    assert (stored["backbone"]["blocks"], stored["clusterer"]["eta"], stored["clusters"]) == (2, 0.2, 4)
    assert stored["description"] == ("JULE on my photos, settings derived from 96 images of 3x36x36 pixels and "
                                     "K = 4: 32x32 RGB input, 2 CNN blocks, eta 0.2")
    assert load_recipe(out / "recipe.yaml") == stored
    rows = (out / "assignments.csv").read_text().splitlines()[1:]
    found = {Path(line.rsplit(",", 1)[0]).name: int(line.rsplit(",", 1)[1]) for line in rows}
    assert len(found) == 96
    assert nmi(np.array([truth[f] for f in found]), np.array(list(found.values()))) > 0.8


def test_class_folders_give_the_number_of_clusters(runner, tmp_path):
    for k, value in enumerate((20, 120, 220)):
        for i in range(4):
            path = tmp_path / "shapes" / f"class_{k}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((30, 30), value + i, np.uint8)).save(path)
    result = runner.invoke(app, ["validate", "jule", "--data", str(tmp_path / "shapes")])
    assert result.exit_code == 0, result.output
    assert "# clusters: 3  <- the number of label classes in shapes (--clusters K to choose)" in result.output
    printed = yaml.safe_load(result.output)
    assert printed["data"]["resize"] == [28, 28] and printed["backbone"]["pool"] == [True, False]


# -- bad input: one line, exit code 2, nothing written ------------------------------------------


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def flat_folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 20, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("args, expected", [
    (["--clusters", "3"], "{folder}: no readable images (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)"),
    ([], "{recipe}: clusters: {folder} has no labels; give the number of clusters with --clusters K"),
    (["--clusters", "13"], "{recipe}: clusters: 13 clusters requested but {folder} has only 12 images; "
                           "give --clusters K with K at most 12"),
    (["--clusters", "1"], "{recipe}: clusters: expected at least 2 clusters, got 1"),
], ids=["no-images", "no-k-unlabelled", "k-above-n", "k-below-2"])
def test_bad_input_is_one_line_and_writes_nothing(runner, tmp_path, args, expected):
    folder = tmp_path / "photos"
    if "no readable" in expected:
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    else:
        flat_folder(folder, 12)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")  # a folder the user already has: left as it was
    result = runner.invoke(app, ["run", "jule", "--data", str(folder), *args, "--out", str(out), "--force"])
    assert one_line(result) == "error: " + expected.format(folder=folder, recipe=JULE.resolve())
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_a_single_class_folder_needs_clusters(runner, tmp_path):
    (tmp_path / "photos").mkdir()
    flat_folder(tmp_path / "photos" / "cats", 6)
    result = runner.invoke(app, ["validate", "jule", "--data", str(tmp_path / "photos")])
    assert one_line(result) == (f"error: {JULE.resolve()}: clusters: {tmp_path / 'photos'} has labels of a single "
                                f"class; give the number of clusters with --clusters K (at least 2)")


def test_data_names_that_look_like_numbers_stay_text(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flat_folder(tmp_path / "2024", 6)  # --set data=2024 would read a number; --data quotes it
    result = runner.invoke(app, ["validate", "jule", "--data", "2024", "--clusters", "2"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["data"]["name"] == "2024"
