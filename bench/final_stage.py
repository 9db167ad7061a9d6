"""Final stages compared on the same trained networks: `julekit recluster` with named variants.

    python bench/final_stage.py runs/reproduce/jule_usps runs/reproduce/jule_mnist_test
    python bench/final_stage.py runs/reproduce/jule_usps --variants default,kc_all --json out.json

Each RUN is a finished run directory or a --seeds folder (every finished seed in it). Every
variant re-runs only the final stage on the run's last checkpoint (same features, same seed
of the final stage), so rows differ only by the final stage. "sf" is the joint loop's own
labels (the last period's row), "run" the run's own final stage; "default" re-clustering
with the run's settings must equal "run" (a check that the comparison is like for like).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

# name -> overrides of the run's recipe
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "kc_all": ["clusterer.kc_min_clusters=0"],
    "no_absorb": ["clusterer.absorb_isolated_above=null"],
    "torch_off": ["clusterer.kc_min_clusters=0", "clusterer.absorb_isolated_above=null"],
    "absorb_always": ["clusterer.absorb_isolated_above=1"],
    "fast": ["linkage.update=fast"],
    "middle": ["linkage.size_norm=middle"],
    "bn_keep": ["train.final_bn=keep"],
    "features_train": ["train.feature_mode=train"],
    "k_s_10": ["affinity.k_s=10"],
    "k_s_40": ["affinity.k_s=40"],
    "renorm": ["affinity.normalize=renorm"],
    "average": ["linkage=average"],
    "eta_1": ["clusterer.eta=1.0"],
    "no_guard": ["clusterer.final_outlier_fraction=0"],
    "previous": ["clusterer.final_outlier_fraction=0", "clusterer.kc_min_clusters=0",
                 "clusterer.absorb_isolated_above=null"],
    "outliers_1pct": ["clusterer.final_outlier_fraction=0.01"],
    "outliers_5pct": ["clusterer.final_outlier_fraction=0.05"],
    "outliers_1pct_kc_all": ["clusterer.final_outlier_fraction=0.01", "clusterer.kc_min_clusters=0"],
}


def seed_runs(path: Path) -> list[Path]:
    if (path / "seeds.json").exists():
        return sorted((p for p in path.glob("seed*") if (p / "summary.json").exists()), key=lambda p: int(p.name[4:]))
    return [path]


def sf_and_run(run: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["period"] != "final"][-1]
    final = [r for r in rows if r["period"] == "final"][-1]
    return (last["nmi"], last["acc"]), (final["nmi"], final["acc"])


def recluster(run: Path, overrides: list[str], out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "jule_kit.cli", "recluster", str(run), "--out", str(out), "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return summary["nmi"], summary["acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for root in args.runs:
            runs = seed_runs(root)
            table: dict[str, list[tuple[float, float]]] = {"sf": [], "run": []}
            for run in runs:
                sf, own = sf_and_run(run)
                table["sf"].append(sf)
                table["run"].append(own)
            for name in names:
                table[name] = [recluster(run, VARIANTS[name], Path(tmp) / f"{root.name}-{run.name}-{name}")
                               for run in runs]
                print(f"  {root.name} {name}: " + "  ".join(f"{n:.4f}" for n, _ in table[name]), flush=True)
            report[str(root)] = {"seeds": [r.name for r in runs], **table}
            print(f"\n{root} ({len(runs)} runs): NMI (ACC) per run, mean")
            for name, values in table.items():
                cells = "  ".join(f"{n:.4f} ({a:.3f})" for n, a in values)
                print(f"  {name:15} {cells}   mean {mean(n for n, _ in values):.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
