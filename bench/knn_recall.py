"""Approximate neighbours (``affinity.knn: kmeans_tree | ivf | hnsw``) against the exact graph: recall and NMI.

    python bench/knn_recall.py                           # MNIST-test and MNIST-full, AC-GDL on pixels
    python bench/knn_recall.py --jule runs/reproduce/jule_mnist_test   # + JULE's final stage, per seed
    python bench/knn_recall.py --quick                   # MNIST-test 3,000 (CI: seconds)

For each dataset (the ``ac_gdl_<dataset>.yaml`` recipe: its pixels, K_s and settings) and each
search: the time of the K_s-NN graph, its recall@K_s against the exact graph (the share of the
true K_s neighbours found) and the NMI of the whole AC-GDL clustering built on it. With
``--jule RUN`` (a finished JULE run, or a ``--seeds`` folder) the JULE forward pass is compared too:
``julekit recluster`` re-runs the run's final stage on its trained network's features with each
search, so only the graph differs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusterbench import REPO, load_avg, load_recipe_for, machine_info, mnist_features, run_stage  # noqa: E402

SEARCHES = ("exact", "kmeans_tree", "ivf", "hnsw")


def recall(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact K_s neighbours the approximate graph found, over all samples."""
    hits = sum(len(set(a) & set(b)) for a, b in zip(approximate, exact))
    return hits / exact.size


def pixel_rows(dataset: str, n: int | None, data_dir: str | None) -> list[dict]:
    from jule_kit.metrics import nmi

    rows, exact_indices = [], None
    for search in SEARCHES:
        recipe = load_recipe_for(REPO / "recipes" / f"ac_gdl_{dataset}.yaml", "cpu", [f"affinity.knn={search}"])
        features, truth = mnist_features(recipe, n, data_dir)
        target = recipe["clusters"] or int(np.unique(truth).size)
        res = run_stage(recipe, features, target, keep_graph=True)
        indices = res["graph"].indices
        exact_indices = indices if search == "exact" else exact_indices
        rows.append({"data": f"{dataset} pixels (AC-GDL)", "n": int(features.shape[0]), "search": search,
                     "graph_s": res["parts"]["knn_graph"], "total_s": res["seconds"],
                     "recall": recall(indices, exact_indices), "nmi": nmi(truth, res["labels"])})
        print_row(rows[-1])
    return rows


def jule_rows(run: Path, data_dir: str | None) -> list[dict]:
    from jule_kit.recluster import recluster
    from jule_kit.seeds import is_multi_seed

    runs = sorted(p for p in run.glob("seed*") if p.is_dir()) if is_multi_seed(run) else [run]
    rows = []
    for one in runs:
        for search in SEARCHES:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                summary = recluster(one, Path(tmp) / "out", [f"affinity.knn={search}"], data_dir=data_dir)
                rows.append({"data": f"JULE final stage, {one.parent.name}/{one.name}", "n": summary["n_samples"],
                             "search": search, "graph_s": float("nan"), "total_s": time.perf_counter() - started,
                             "recall": float("nan"), "nmi": summary["nmi"]})
            print_row(rows[-1])
    return rows


def print_row(r: dict) -> None:
    graph = "–" if np.isnan(r["graph_s"]) else f"{r['graph_s']:.1f}"
    rec = "–" if np.isnan(r["recall"]) else f"{r['recall']:.4f}"
    print(f"| {r['data']} | {r['n']} | {r['search']} | {graph} | {r['total_s']:.1f} | {rec} | {r['nmi']:.4f} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist_test,mnist_full")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many images")
    parser.add_argument("--quick", action="store_true", help="MNIST-test, 3,000 images")
    parser.add_argument("--jule", type=Path, action="append", default=[],
                        help="a finished JULE run (or --seeds folder) to re-cluster with each search")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    datasets = ["mnist_test"] if args.quick else [d for d in args.datasets.split(",") if d]
    n = 3000 if args.quick else args.n
    info = machine_info()
    print(f"CPU {info['cpu']}, {info['cores']} cores; load {load_avg()}; {time.strftime('%Y-%m-%d')}")
    print("| data | N | search | graph s | total s | recall@K_s | NMI |")
    print("|---|---|---|---|---|---|---|")
    for dataset in datasets:
        pixel_rows(dataset, n, args.data_dir)
    for run in args.jule:
        jule_rows(run, args.data_dir)
    print(f"load at the end {load_avg()}")


if __name__ == "__main__":
    main()
