"""`julekit recluster`: the final stage again on a finished run's network."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jule_kit.cli import app

REPO = Path(__file__).resolve().parent.parent


def clusters_of(run_dir: Path) -> set[int]:
    with open(run_dir / "assignments.csv") as fh:
        return {int(r["cluster"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from conftest import real_data_dir

    out = tmp_path_factory.mktemp("recluster") / "jule"
    result = CliRunner().invoke(app, ["run", str(REPO / "recipes/jule_usps.yaml"), "--data-dir", str(real_data_dir()),
                                      "--set", "data.subset=600", "--set", "train.epochs=2", "--device", "cpu",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_own_settings_reproduce_the_run_exactly(finished_run, runner, tmp_path):
    out = tmp_path / "again"
    result = runner.invoke(app, ["recluster", str(finished_run), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "assignments.csv").read_bytes() == (finished_run / "assignments.csv").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    original = json.loads((finished_run / "summary.json").read_text())
    assert summary["nmi"] == original["nmi"]
    assert summary["derived_from"] == {"run": str(finished_run), "checkpoint_period": original["periods"] - 1,
                                       "overrides": []}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["period"] for r in rows] == list(range(original["periods"])) + ["final"]  # SF rows beside the new RC
    assert (out / "montage.png").stat().st_size > 0
    assert (out / "recipe.yaml").read_text() == (finished_run / "recipe.yaml").read_text()


@pytest.mark.parametrize("overrides, n_clusters", [
    (["clusters=5"], 5),
    (["clusters=15", "linkage=average"], 15),
    (["clusterer.final=sf", "clusters=6"], 6),
])
def test_other_final_stages_give_their_cluster_counts(finished_run, runner, tmp_path, overrides, n_clusters):
    out = tmp_path / "other"
    args = ["recluster", str(finished_run), "--out", str(out), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert clusters_of(out) == set(range(n_clusters))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_clusters"] == n_clusters and summary["derived_from"]["overrides"] == overrides
    assert "reclustered: " in result.output


def test_a_key_of_the_joint_loop_is_refused(finished_run, runner, tmp_path):
    out = tmp_path / "bad"
    result = runner.invoke(app, ["recluster", str(finished_run), "--out", str(out), "--set", "train.epochs=3"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.startswith("error: --set train.epochs=3: recluster re-runs only the final stage")
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert not out.exists()


def test_an_unfinished_run_is_refused(finished_run, runner, tmp_path):
    import shutil

    copy = tmp_path / "unfinished"
    shutil.copytree(finished_run, copy)
    (copy / "summary.json").unlink()
    result = runner.invoke(app, ["recluster", str(copy), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert f"{copy}: the run has not finished (no summary.json); finish it with julekit run --resume {copy}" \
        in result.output


def test_final_stage_transfer_on_the_runs_own_data_gives_its_final_stage(finished_run):
    """bench/final_stage_transfer.py on the dataset the run was trained on: the same features, so the
    same final NMI as the run's own final stage, with a line per period."""
    import subprocess
    import sys

    from conftest import real_data_dir

    proc = subprocess.run([sys.executable, "bench/final_stage_transfer.py", str(finished_run), "--data", "usps",
                           "--data-dir", str(real_data_dir())], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((finished_run / "summary.json").read_text())
    assert f"final: NMI {summary['nmi']:.3f}," in proc.stdout
    assert " clusters: NMI " in proc.stdout
