"""The cluster montage: row order, captions, and the montage.png of a real run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from jule_kit.cli import app
from jule_kit.montage import caption_of, cluster_caption, cluster_order, make_montage, pick_members

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_caption_with_and_without_truth():
    assert cluster_caption(3, 1100, 7, 0.91) == "c3 n=1100 maj=7 91%"
    assert cluster_caption(0, 5, 2, 1.0) == "c0 n=5 maj=2 100%"
    assert cluster_caption(12, 40) == "c12 n=40"


def test_rows_are_largest_first_and_show_the_cluster_members():
    sizes = {0: 3, 1: 10, 2: 5, 3: 10}  # clusters 1 and 3 tie: the smaller id first
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    grey = {0: 10, 1: 80, 2: 150, 3: 230}  # every image of a cluster has its own grey level
    images = np.stack([np.full((1, 8, 8), grey[c], np.uint8) for c in labels])
    assert cluster_order(labels) == [1, 3, 2, 0]

    thumb, per_row = 8, 4
    img = make_montage(images, labels, truth=None, per_row=per_row, thumb=thumb)
    assert img.height == 4 * thumb
    px = np.asarray(img.convert("L"))
    left = img.width - per_row * thumb  # where the thumbnails start, after the captions
    for row, c in enumerate([1, 3, 2, 0]):
        cells = px[row * thumb:(row + 1) * thumb, left:]
        shown = min(per_row, sizes[c])
        assert (cells[:, :shown * thumb] == grey[c]).all(), (row, c)
        assert (cells[:, shown * thumb:] == 255).all()  # white where a small cluster has no more members

    assert make_montage(images, labels, truth=None, max_clusters=2, thumb=thumb).height == 2 * thumb


def test_members_are_spread_and_deterministic():
    members = np.arange(100, 200)
    picked = pick_members(members, 12)
    assert len(picked) == 12 and picked[0] == 100 and picked[-1] == 199
    assert (np.diff(picked) > 0).all()
    assert (pick_members(members[:5], 12) == members[:5]).all()


def test_purity_in_caption_matches_the_labels():
    labels = np.array([0] * 10 + [1] * 4)
    truth = np.array([7] * 9 + [2] + [3] * 2 + [5] * 2)
    assert caption_of(0, labels, truth) == "c0 n=10 maj=7 90%"
    assert caption_of(1, labels, truth) == "c1 n=4 maj=3 50%"  # a tie goes to the smaller class id
    assert caption_of(1, labels, None) == "c1 n=4"
    # non-square RGB images fit the thumbnails too
    assert make_montage(np.zeros((14, 3, 6, 10), np.uint8), labels, truth, thumb=16).height == 2 * 16


def test_real_run_writes_montage(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    with Image.open(out / "montage.png") as img:
        assert img.height == summary["n_clusters"] * 32  # one 32-px row per cluster (10 <= max_clusters)
        assert img.width > 12 * 32  # 12 thumbnails after the caption column
        px = np.asarray(img.convert("L"))
    assert px[:, -12 * 32:].std() > 20  # digit thumbnails, not a blank canvas
