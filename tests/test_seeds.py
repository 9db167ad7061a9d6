"""`julekit run --seeds N`: per-seed runs, mean ± std, stability across seeds, resume."""
from __future__ import annotations

import csv
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from jule_kit.cli import app
from jule_kit.metrics import nmi

REPO = Path(__file__).resolve().parent.parent


def jule_args(data: Path, out: Path) -> list[str]:
    # short JULE on 300 real USPS images: 2 epochs per period, so seeds give different clusterings
    return ["run", str(REPO / "recipes/jule_usps.yaml"), "--set", f"data={data}", "--set", "data.subset=300",
            "--set", "train.epochs=2", "--device", "cpu", "--out", str(out), "--seeds", "3"]


def assignments(run_dir: Path) -> np.ndarray:
    with open(run_dir / "assignments.csv") as fh:
        return np.array([int(r["cluster"]) for r in csv.DictReader(fh)])


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory) -> tuple[Path, str]:
    from typer.testing import CliRunner

    from conftest import real_data_dir

    out = tmp_path_factory.mktemp("seeds") / "jule"
    result = CliRunner().invoke(app, jule_args(real_data_dir() / "usps.npz", out))  # the default threads
    assert result.exit_code == 0, result.output
    return out, result.output


def test_each_seed_is_a_run_with_its_own_seed(three_seeds):
    out, output = three_seeds
    for k in range(3):
        summary = json.loads((out / f"seed{k}" / "summary.json").read_text())
        assert summary["recipe"]["seed"] == k
        assert f"seed {k}: " in output
    # every seed clusters the same 300 samples (the subset does not follow the seed)
    truths = [np.array([int(r["label"]) for r in csv.DictReader(open(out / f"seed{k}" / "assignments.csv"))])
              for k in range(3)]
    assert all(np.array_equal(truths[0], t) for t in truths[1:])


def test_summary_has_mean_std_and_stability(three_seeds):
    out, output = three_seeds
    summary = json.loads((out / "summary.json").read_text())
    nmis = [json.loads((out / f"seed{k}" / "summary.json").read_text())["nmi"] for k in range(3)]
    assert summary["seeds"] == [0, 1, 2]
    assert summary["nmi_mean"] == pytest.approx(np.mean(nmis))
    assert summary["nmi_std"] == pytest.approx(np.std(nmis, ddof=1))
    assert summary["nmi_std"] > 0, "the seeds should not all give the same clustering"
    labels = [assignments(out / f"seed{k}") for k in range(3)]
    pairs = [nmi(a, b) for a, b in combinations(labels, 2)]
    assert summary["stability_nmi_mean"] == pytest.approx(np.mean(pairs))
    assert summary["stability_nmi_min"] == pytest.approx(min(pairs))
    assert 0.3 < summary["stability_nmi_mean"] < 1.0
    # the closing line: mean ± std and the stability, one line
    last = output.strip().splitlines()[-1]
    assert f"NMI {summary['nmi_mean']:.4f} ± {summary['nmi_std']:.4f}" in last
    assert f"stability {summary['stability_nmi_mean']:.4f}" in last


def test_resume_reuses_finished_seeds_and_runs_missing_ones(three_seeds, runner, tmp_path):
    out, _ = three_seeds
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "seed2")  # as if stopped before the last seed started
    (copy / "summary.json").unlink()
    result = runner.invoke(app, ["run", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    assert "seed 0: " in result.output and "reused" in result.output.split("seed 1: ")[1].splitlines()[0]
    before = json.loads((out / "summary.json").read_text())
    after = json.loads((copy / "summary.json").read_text())
    assert [r["assignments_sha256"] for r in after["runs"]] == [r["assignments_sha256"] for r in before["runs"]]
    assert after["nmi_mean"] == pytest.approx(before["nmi_mean"])


def test_bad_seeds(runner, tmp_path):
    result = runner.invoke(app, ["run", "ac_gdl_usps", "--seeds", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --seeds: expected at least 1, got 0"
    assert not (tmp_path / "x").exists()
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--seeds", "2"])
    assert result.exit_code == 2 and "do not give a recipe, --set, --device, --seed or --seeds" in result.output


def test_one_seed_still_gives_the_multi_seed_summary(runner, usps_subset, tmp_path):
    out = tmp_path / "one"
    result = runner.invoke(app, ["run", "recipes/ac_gdl_usps.yaml", "--set", f"data={usps_subset}", "--seeds", "1",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["nmi_std"] == 0.0 and summary["stability_nmi_mean"] is None
    assert (out / "seed0" / "summary.json").exists()
    assert "1 seed on 600 samples" in result.output and "stability" not in result.output
