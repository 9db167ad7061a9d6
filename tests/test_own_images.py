"""recipes/cluster_folder.yaml on a folder of the user's own images (no labels, one broken file)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jule_kit.cli import app
from jule_kit.metrics import nmi

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "cluster_folder.yaml"
KINDS = ("solid", "stripes", "circle")


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    """24x24 RGB images of three kinds that look nothing alike, each with some jitter."""
    if kind == "solid":
        colour = np.array([200, 40, 40]) + rng.integers(-30, 30, 3)
        return Image.fromarray(np.clip(colour + rng.normal(0, 12, (24, 24, 3)), 0, 255).astype(np.uint8))
    img = Image.new("RGB", (24, 24), "white" if kind == "stripes" else "black")
    pen = ImageDraw.Draw(img)
    if kind == "stripes":
        for x in range(int(rng.integers(0, 4)), 24, 6):
            pen.rectangle([x, 0, x + 2, 23], fill=(0, 0, 160))
    else:
        (cx, cy), r = 12 + rng.integers(-2, 3, 2), int(rng.integers(6, 10))
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40, 220, 40))
    return img


def test_cluster_folder_recipe_on_own_images(runner, tmp_path):
    folder = tmp_path / "my photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        for kind in KINDS:
            draw(kind, rng).save(folder / f"{kind}_{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but then garbage")
    (folder / "notes.txt").write_text("not an image")

    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(RECIPE), "--set", f"data.name={folder}", "--set", "clusters=3",
                                 "--set", "affinity.k_s=5", "--set", "train.epochs=1", "--device", "cpu",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"skipped 1 unreadable files: {folder / 'broken.png'}" in result.output  # shown even with --quiet

    with open(out / "assignments.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "cluster"]  # no labels: no label column
    assert len(table) == 60 and not any("broken" in r["path"] or "notes" in r["path"] for r in table)
    kinds = [KINDS.index(Path(r["path"]).name.split("_")[0]) for r in table]
    assert nmi(np.array(kinds), np.array([int(r["cluster"]) for r in table])) > 0.9  # the kinds are found

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_clusters"] == 3 and summary["n_samples"] == 60
    assert not {"nmi", "acc", "ari"} & set(summary)
    assert summary["skipped_files"] == [str(folder / "broken.png")]
    with Image.open(out / "montage.png") as img:
        assert img.height == 3 * 32
