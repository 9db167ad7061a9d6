"""The benchmark scripts run end to end on small real-data subsets and report well-formed figures.

No timing is asserted (the machine is shared); only that the scripts exit 0, print the
figures, and write JSON with the keys docs/PERFORMANCE.md is built from.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def assert_nmi(value: object) -> None:
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, value


def test_vs_sklearn_quick(data_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "vs.json"
    stdout = run(["bench/vs_sklearn.py", "--quick", "--n", "3000", "--json", str(out_json)])
    printed = re.findall(r"^(julekit|sklearn) NMI\s+([0-9.]+)", stdout, flags=re.M)
    assert [name for name, _ in printed] == ["julekit", "sklearn"], stdout
    for _, value in printed:
        assert_nmi(float(value))
    assert "speed ratio" in stdout and "peak RSS" in stdout, stdout

    report = json.loads(out_json.read_text())
    assert {"machine", "julekit", "sklearn", "speedup_end_to_end", "speedup_after_graph",
            "sklearn_fit_seconds", "targets", "load_start"} <= report.keys()
    jk, sk = report["julekit"], report["sklearn"]
    assert jk["n"] == sk["n"] == 3000
    assert {"knn_graph", "initial_clusters", "gdl_table", "merging"} <= jk["parts"].keys()
    for side in (jk, sk):
        assert_nmi(side["nmi"])
        assert side["n_clusters"] == 10
        assert side["peak_rss_bytes"] >= side["baseline_rss_bytes"] > 0
    assert report["speedup_end_to_end"] > 0 and not report["sklearn_extrapolated"]


def test_growth_quick(data_dir: Path, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "growth.json", tmp_path / "growth.png"
    stdout = run(["bench/growth.py", "--quick", "--sizes", "2000,4000", "--json", str(out_json),
                  "--plot", str(out_png)])
    assert re.search(r"log-log slopes, mnist rows: time -?[0-9.]+ \(kNN -?[0-9.]+", stdout), stdout
    table = [ln for ln in stdout.splitlines() if ln.startswith("| mnist |")]
    assert len(table) == 2, stdout
    for line in table:
        assert_nmi(float(line.strip("|").split("|")[-2]))
        assert float(line.strip("|").split("|")[8].replace(",", "")) > 0  # merges per second

    report = json.loads(out_json.read_text())
    assert {"machine", "device", "rows", "slopes"} <= report.keys()
    assert [r["n"] for r in report["rows"]] == [2000, 4000]
    for r in report["rows"]:
        assert {"seconds", "parts", "peak_rss_bytes", "baseline_rss_bytes", "initial_clusters", "load_before"} <= r.keys()
        assert_nmi(r["nmi"])
        assert r["n_clusters"] == 10
    assert math.isfinite(report["slopes"]["mnist_seconds"])
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_determinism_cost_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "det.json"
    stdout = run(["bench/determinism_cost.py", "--quick", "--json", str(out_json)])
    assert re.search(r"^quickstart_digits: deterministic on [0-9.]+ s, off [0-9.]+ s .* -> on/off [0-9.]+", stdout,
                     flags=re.M), stdout
    report = json.loads(out_json.read_text())["quickstart_digits"]
    assert len(report["seconds_on"]) == len(report["seconds_off"]) == 1 and report["ratio_on_off"] > 0
    assert all(len(h) == 16 for h in report["hashes_on"] + report["hashes_off"])


def test_knn_recall_quick(data_dir: Path) -> None:
    stdout = run(["bench/knn_recall.py", "--quick"])
    rows = [ln.strip("|").split("|") for ln in stdout.splitlines() if ln.startswith("| mnist_test pixels")]
    assert [r[2].strip() for r in rows] == ["exact", "kmeans_tree", "ivf", "hnsw"], stdout
    recalls = {r[2].strip(): float(r[5]) for r in rows}
    assert recalls["exact"] == 1.0 and all(0.9 <= recalls[kind] <= 1.0 for kind in ("kmeans_tree", "ivf", "hnsw"))
    for r in rows:
        assert_nmi(float(r[6]))


def test_cnn_throughput_quick(data_dir: Path) -> None:
    stdout = run(["bench/cnn_throughput.py", "--quick", "--images", "200"])
    rows = [ln.strip("|").split("|") for ln in stdout.splitlines() if ln.startswith(("| usps", "| mnist"))]
    assert [r[0].strip() for r in rows] == ["usps 1x16x16", "mnist 1x28x28"], stdout
    # train.channels_last=auto: NCHW below 28x28, channels-last from there
    for r, layout, column in zip(rows, ["NCHW", "channels-last"], [4, 3]):
        assert r[1].strip() == layout, r
        speeds = [float(v) for v in r[2:7]]  # loop, loop channels-last, loop NCHW, eager, channels_last
        assert all(v > 0 for v in speeds), r
        assert speeds[0] == float(r[column]), r  # the default loop is the one in that layout
        assert r[7].strip() in ("eager", "channels_last") and all(0 < float(v) for v in r[8:11]), r


def test_gpu_check_rehearsal_on_cpu(data_dir: Path, tmp_path: Path) -> None:
    """bench/gpu_check.sh end to end with the device set to cpu and tiny runs: the summary names
    every run, the same-seed USPS pair matches byte for byte, the tarball holds the logs and outputs."""
    out = tmp_path / "check"
    args = ["bash", "bench/gpu_check.sh", "--device", "cpu", "--cap", "90", "--no-install", "--out", str(out),
            "--set", "data.subset=300", "--set", "train.epochs=1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "JULEKIT_DATA": str(data_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    runs = {r["run"]: r for r in summary["runs"]}
    assert set(runs) == {"quickstart", "usps_a", "usps_b", "jule_mnist_full", "jule_coil100"}
    for name in ("quickstart", "usps_a", "usps_b"):
        assert runs[name]["status"] == "finished" and runs[name]["clusters"] == 10, runs[name]
        assert_nmi(runs[name]["nmi"])
    for name in ("jule_mnist_full", "jule_coil100"):  # a loaded machine may stop them at the cap
        assert runs[name]["status"] in ("finished", "capped at 90 s"), runs[name]
    assert summary["same_seed_pair"] == {"compared": True, "identical": True, "nmi_between": 1.0}
    assert "Same-seed USPS pair: assignments.csv identical" in (out / "summary.md").read_text()
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./usps_a/assignments.csv", "./usps_b/metrics.jsonl", "./jule_mnist_full.log", "./gpu_check.log"} <= names
    assert not any(n.endswith("checkpoint.pt") for n in names)

    again = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 2
    assert again.stderr.strip() == f"gpu_check.sh: {out}/work already exists; pass another --out or move it away"


def test_new_datasets_tabulates_the_baselines_and_the_derived_jule(tmp_path: Path) -> None:
    """digits (scikit-learn's, embedded), one seed: K-means, both AC-GDL settings and the derived JULE,
    with JULE's SF, RC − SF and its lead over the best baseline; a second call reuses every run."""
    table = tmp_path / "new.md"
    args = ["bench/new_datasets.py", "--datasets", "digits", "--seeds", "1", "--out", str(tmp_path / "runs"),
            "--table", str(table)]
    run(args)
    rows = [line.split("|")[1:-1] for line in table.read_text().splitlines() if line.startswith("| digits")]
    assert [r[4].strip() for r in rows] == ["K-means", "AC-GDL (K_c 5)", "AC-GDL (max affinity)", "JULE (derived)"]
    assert all(r[1].strip() == "1797" and r[3].strip() == "183 / 174" for r in rows), rows
    for r in rows:
        assert_nmi(float(r[5].strip(" *").split(" ± ")[0]))
    assert_nmi(float(rows[3][7].split(" ± ")[0]))  # JULE SF
    gap = float(rows[3][8])
    assert -1.0 <= gap <= 1.0 and rows[0][8].strip() == "-"
    assert re.search(r"^- digits: JULE RC − best raw-pixel baseline = [+-]0\.\d{3}; seed 0 cluster sizes \[",
                     table.read_text(), flags=re.M), table.read_text()
    again = run(args)
    assert again.count(": reused (1 seeds)") == 4, again
