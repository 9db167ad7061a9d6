"""JULE with settings derived from the data (`julekit run jule --data X`) on datasets no recipe was
tuned on, against the raw-pixel baselines on the same images.

For each dataset: K-means (`recipes/kmeans.yaml`, best of 10 restarts, several seeds), AC-GDL
(`recipes/ac_gdl.yaml` with the K_c = 5 criterion and with max-affinity merges, k_c = 1; one run
each, it is deterministic) and the derived JULE recipe (`recipes/jule.yaml`, several seeds; RC is
its final stage, SF the last joint period). Runs go to --out (finished ones are reused, interrupted
ones resumed, as in bench/reproduce.py); the table goes to stdout and --table.

    julekit datasets --get animal_shapes --get animal_shapes_unequal --get lfw_faces_nonfaces
    python bench/new_datasets.py --datasets digits,animal_shapes,animal_shapes_unequal,lfw_faces_nonfaces --seeds 3
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from jule_kit.data import load_dataset  # noqa: E402
from reproduce import RECIPES, made_with, run_recipe, seed_dirs, sf_values  # noqa: E402

# (row name, recipe, extra --set, seeds: None = the --seeds asked for)
METHODS = (
    ("K-means", "kmeans", [], None),
    ("AC-GDL (K_c 5)", "ac_gdl", [], 1),
    ("AC-GDL (max affinity)", "ac_gdl", ["clusterer.k_c=1"], 1),
    ("JULE (derived)", "jule", [], None),
)


def seed_values(out: Path, key: str = "nmi") -> list[float]:
    return [json.loads((d / "summary.json").read_text())[key] for d in seed_dirs(out) if (d / "summary.json").is_file()]


def cluster_sizes(seed_dir: Path) -> list[int]:
    with open(seed_dir / "assignments.csv") as f:
        rows = list(csv.DictReader(f))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["cluster"]] = counts.get(r["cluster"], 0) + 1
    return sorted(counts.values(), reverse=True)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="digits,animal_shapes,animal_shapes_unequal,lfw_faces_nonfaces")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "new_datasets")
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--data-dir")
    ap.add_argument("--table", type=Path, default=REPO / "bench" / "results" / "new_datasets.md")
    ap.add_argument("--table-only", action="store_true", help="do not run anything; tabulate the runs on disk")
    args = ap.parse_args()

    lines = ["| dataset | N | K | class sizes (largest / smallest) | method | NMI | seeds | JULE SF | JULE RC − SF "
             "| s / seed | made with |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        data = load_dataset(dataset, data_dir=args.data_dir)
        sizes = sorted(np.bincount(data.labels).tolist(), reverse=True)
        best_baseline = None
        for label, recipe, sets, seeds in METHODS:
            out = args.out / f"{recipe}{'_' + '_'.join(s.replace('=', '') for s in sets) if sets else ''}_{dataset}"
            n_seeds = seeds or args.seeds
            if args.table_only:
                summary_path = out / "summary.json"
                if not summary_path.is_file():
                    continue
                summary = json.loads(summary_path.read_text())
            else:
                summary = run_recipe(RECIPES / f"{recipe}.yaml", [f"data={dataset}", *sets], out, n_seeds,
                                     args.device, args.data_dir)
            nmi = seed_values(out)
            seconds = seed_values(out, "seconds")
            sf = sf_values(out) if recipe == "jule" else []
            gap = [r - s for r, s in zip(nmi, sf)]
            if recipe != "jule":
                mean = statistics.fmean(nmi)
                best_baseline = mean if best_baseline is None else max(best_baseline, mean)
            lines.append(
                f"| {dataset} | {data.n} | {len(sizes)} | {sizes[0]} / {sizes[-1]} | {label} | **{mean_std(nmi)}** "
                f"| {len(nmi)} | {mean_std(sf) if sf else '-'} | "
                f"{', '.join(f'{g:+.3f}' for g in gap) if gap else '-'} | {statistics.fmean(seconds):.1f} | "
                f"{made_with(out, summary)} |")
            if recipe == "jule":
                lead = statistics.fmean(nmi) - (best_baseline or 0.0)
                notes.append(f"- {dataset}: JULE RC − best raw-pixel baseline = {lead:+.3f}; seed 0 cluster sizes "
                             f"{cluster_sizes(out / 'seed0')} (classes {sizes})")
    text = "\n".join(lines + [""] + notes) + "\n"
    print(text)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(text)


if __name__ == "__main__":
    main()
