"""How the AC-GDL clustering stage (recipes/ac_gdl_mnist_full.yaml) grows with N: time and peak memory.

    python bench/growth.py                      # MNIST subsets 10k, 20k, 40k, 70k + 200k synthetic (CPU)
    python bench/growth.py --quick              # MNIST 5k, 10k (under a minute)
    python bench/growth.py --device cuda --include-1m   # on a GPU machine (torch kNN on the GPU), up to 1M
    python bench/growth.py --set affinity.knn=kmeans_tree --sizes 70000 \
        --synthetic-sizes 70000,200000,500000,1000000   # the k-means tree graph: a million points on 2 cores
    python bench/growth.py --set affinity.knn=kmeans_tree --sizes "" --synthetic-sizes "" \
        --noisy-sizes 200000,500000,1000000   # real image structure: MNIST-full pixels repeated with noise
    python bench/growth.py --set affinity.knn=kmeans_tree --sizes "" --synthetic-sizes "" \
        --noisy-sizes 200000,500000,1000000 --features-run runs/reproduce/jule_mnist_full/seed0
        # real features: a finished MNIST-full run's CNN features, repeated with noise

Each N runs in a fresh child process (peak RSS is that N's alone): the recipe's kNN graph,
path-integral initial clusters and GDL merges down to 10 clusters, exactly the library code
the recipe runs. MNIST sizes are the recipe's seeded subsets of mnist_full (784-d pixels);
synthetic sizes are 160-d Gaussian blobs (1000 blobs in 10 groups), L2-normalised like the
JULE CNN's embeddings. The exact kNN over 1M x 160 is about 1e14 flops, GPU work: it is only
run with --include-1m; with ``--set affinity.knn=kmeans_tree`` (or ``ivf``) the graph is approximate
and 1M is CPU work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusterbench import (DEFAULT_RECIPE, REPO, gb, load_avg, loglog_slope, machine_info,  # noqa: E402
                          run_child)

DEFAULT_SIZES = "10000,20000,40000,70000"
QUICK_SIZES = "5000,10000"
DEFAULT_SYNTHETIC = "200000"
ONE_MILLION = 1_000_000
# the kinds of rows: (the job's "data", plot style, plot label); each kind gets its own slopes and line
DATA_KINDS = (("mnist", "o-", "MNIST 784-d"), ("synthetic", "s--", "synthetic 160-d"),
              ("mnist_noisy", "^-.", "MNIST + noise 784-d"), ("run_noisy", "v-.", "JULE features + noise"))


def sizes_arg(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def print_table(rows: list[dict]) -> None:
    print("| data | N | D | total s | kNN graph s | initial clusters s | GDL table s | merging s | merges / s | "
          "peak RSS GB | RSS before GB | GPU peak GB | initial→final clusters | NMI | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["parts"]
        gpu = f"{gb(r['gpu_peak_bytes']):.2f}" if "gpu_peak_bytes" in r else "–"
        print(f"| {r['data']} | {r['n']} | {r['dim']} | {r['seconds']:.1f} | {p['knn_graph']:.1f} | "
              f"{p['initial_clusters']:.2f} | {p['gdl_table']:.2f} | {p['merging']:.1f} | {merges_per_second(r):,.0f} | "
              f"{gb(r['peak_rss_bytes']):.2f} | {gb(r['baseline_rss_bytes']):.2f} | {gpu} | "
              f"{r.get('initial_clusters', '?')}→{r['n_clusters']} | {r['nmi']:.3f} | {r['load_before'][0]:.2f} |",
              flush=True)


def features_file(args: argparse.Namespace) -> str:
    """The --features-run network's final features, extracted once into runs/bench/ for every child."""
    import numpy as np
    from clusterbench import run_features

    path = REPO / "runs" / "bench" / f"features-{Path(args.features_run).resolve().parent.name}-" \
        f"{Path(args.features_run).name}.npz"
    if not path.exists():
        features, labels = run_features(args.features_run, args.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=features.numpy(), labels=labels)
    return str(path)


def merges_per_second(row: dict) -> float:
    """Merges of the run (initial clusters down to the target) per second of merging."""
    return (row["initial_clusters"] - row["n_clusters"]) / max(row["parts"]["merging"], 1e-9)


def slopes(rows: list[dict]) -> dict[str, float]:
    """Log-log slopes of time and peak memory against N: all rows, and the rows of each data kind."""
    out: dict[str, float] = {}
    groups = {"all": rows, **{kind: [r for r in rows if r["data"] == kind] for kind, _, _ in DATA_KINDS}}
    for name, rs in groups.items():
        if len(rs) < 2:
            continue
        ns = [r["n"] for r in rs]
        out[f"{name}_seconds"] = loglog_slope(ns, [r["seconds"] for r in rs])
        out[f"{name}_knn_seconds"] = loglog_slope(ns, [r["parts"]["knn_graph"] for r in rs])
        out[f"{name}_clustering_seconds"] = loglog_slope(ns, [r["seconds"] - r["parts"]["knn_graph"] for r in rs])
        out[f"{name}_peak_rss"] = loglog_slope(ns, [r["peak_rss_bytes"] for r in rs])
        # memory the stage itself adds: the imports and the raw data are not the algorithm's
        out[f"{name}_peak_growth"] = loglog_slope(ns, [r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in rs])
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    series = [("seconds", "total", lambda r: r["seconds"]),
              ("seconds", "kNN graph", lambda r: r["parts"]["knn_graph"]),
              ("seconds", "init + GDL merging", lambda r: r["seconds"] - r["parts"]["knn_graph"]),
              ("GB", "peak RSS", lambda r: gb(r["peak_rss_bytes"])),
              ("GB", "peak RSS - RSS before the stage", lambda r: gb(r["peak_rss_bytes"] - r["baseline_rss_bytes"]))]
    if any("gpu_peak_bytes" in r for r in rows):
        series.append(("GB", "GPU peak", lambda r: gb(r.get("gpu_peak_bytes", 0))))
    n_lo, n_hi = min(r["n"] for r in rows), max(r["n"] for r in rows)
    for ax, unit in zip(axes, ("seconds", "GB")):
        anchor = None
        for i, (u, label, f) in enumerate(s for s in series if s[0] == unit):
            colour = f"C{i}"
            for data, style, data_label in DATA_KINDS:
                rs = [r for r in rows if r["data"] == data]
                if rs:  # MNIST and synthetic rows are separate lines: different data, not one curve
                    ax.plot([r["n"] for r in rs], [f(r) for r in rs], style, color=colour,
                            label=f"{label} ({data_label})")
                    anchor = anchor or (rs[0]["n"], f(rs[0]))
        # slope-1 reference through the first total: a line parallel to it grows linearly
        ax.plot([n_lo, n_hi], [anchor[1] * n_lo / anchor[0], anchor[1] * n_hi / anchor[0]], "k:", lw=1.2,
                label="slope 1 (linear)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (samples)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: no data hidden
    axes[0].set_title("time of the clustering stage")
    axes[1].set_title("peak memory")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help=f"MNIST subset sizes (default {DEFAULT_SIZES}; --quick {QUICK_SIZES})")
    parser.add_argument("--synthetic-sizes", default=None,
                        help=f"synthetic 160-d sizes (default {DEFAULT_SYNTHETIC}; none with --quick)")
    parser.add_argument("--noisy-sizes", default="",
                        help="sizes of MNIST-full pixels repeated with noise (784-d real image structure), "
                        "e.g. 200000,500000,1000000")
    parser.add_argument("--features-run", default=None,
                        help="a finished JULE run: its final CNN features (L2 rows) repeated with noise of std "
                        "0.01 a dimension to --noisy-sizes, instead of MNIST pixels")
    parser.add_argument("--include-1m", action="store_true", help="add 1,000,000 synthetic samples (for a GPU)")
    parser.add_argument("--quick", action="store_true", help=f"MNIST {QUICK_SIZES} only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device of the kNN search (cuda: torch kNN on the GPU; merging stays on the CPU)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. --set affinity.knn=kmeans_tree (repeatable)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows and slopes to this JSON file")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "growth_cpu.png",
                        help="log-log plot of seconds and peak GB vs N (default docs/growth_cpu.png)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: print the table and slopes and redraw the plot from this --json file")
    parser.add_argument("--profile", action="store_true",
                        help="run each N under cProfile and print the functions with the most own time "
                        "(slows the merging; the table's times are then not comparable)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per N (default: none)")
    args = parser.parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        summarise(saved["rows"], args, saved["machine"], saved["device"], saved["recipe"])
        return

    mnist = sizes_arg(args.sizes if args.sizes is not None else (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    synthetic = sizes_arg(args.synthetic_sizes if args.synthetic_sizes is not None
                          else ("" if args.quick else DEFAULT_SYNTHETIC))
    if args.include_1m and ONE_MILLION not in synthetic:
        synthetic.append(ONE_MILLION)
    noisy_sizes = sorted(sizes_arg(args.noisy_sizes))
    # the run's features are extracted once, and only when some noisy size asks for them
    noisy = ({"data": "run_noisy", "features": features_file(args)} if args.features_run and noisy_sizes
             else {"data": "mnist_noisy"})
    jobs = ([{"data": "mnist", "n": n} for n in sorted(mnist)] + [{"data": "synthetic", "n": n} for n in sorted(synthetic)]
            + [noisy | {"n": n} for n in noisy_sizes])
    info = machine_info()
    print(f"device {args.device}; CPU {info['cpu']}, {info['cores']} cores; load {load_avg()}; recipe {args.recipe}"
          + "".join(f" --set {o}" for o in args.overrides), flush=True)

    rows: list[dict] = []
    for job in jobs:
        res = run_child({**job, "kind": "julekit", "recipe": args.recipe, "data_dir": args.data_dir,
                         "device": args.device, "profile": args.profile, "overrides": args.overrides},
                        timeout=args.timeout)
        if res is None:
            print(f"{job['data']} N = {job['n']}: ran past {args.timeout:.0f} s, stopped; larger sizes skipped")
            break
        rows.append({**res, "data": job["data"]})
        p = res["parts"]
        print(f"{job['data']:9s} N = {res['n']:8d}: {res['seconds']:7.1f} s (kNN {p['knn_graph']:.1f} s, "
              f"init {p['initial_clusters']:.2f} s, GDL table {p['gdl_table']:.2f} s, merging {p['merging']:.1f} s), "
              f"peak RSS {gb(res['peak_rss_bytes']):.2f} GB, NMI {res['nmi']:.3f}, load {res['load_before']}",
              flush=True)
        for f in res.get("profile_top", []):
            print(f"    {f['tottime']:8.2f} s own {f['cumtime']:8.2f} s cum {f['ncalls']:>10} calls  {f['function']}")

    fit = summarise(rows, args, info, args.device, args.recipe)
    if args.json is not None:
        out = {"machine": info, "device": args.device, "recipe": args.recipe, "overrides": args.overrides,
               "command": " ".join(["python", *sys.argv]), "rows": rows, "slopes": fit, "load_end": load_avg()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


def summarise(rows: list[dict], args: argparse.Namespace, info: dict, device: str, recipe: str) -> dict[str, float]:
    """Print the table and the log-log slopes, draw the plot; return the slopes."""
    print()
    print_table(rows)
    fit = slopes(rows)
    print()
    if len(rows) < 2:
        print("log-log slopes need two or more sizes")
    for name in ("all", *(kind for kind, _, _ in DATA_KINDS)):
        if f"{name}_seconds" in fit:
            print(f"log-log slopes, {name} rows: time {fit[f'{name}_seconds']:.2f} (kNN {fit[f'{name}_knn_seconds']:.2f}, "
                  f"init + merging {fit[f'{name}_clustering_seconds']:.2f}); peak RSS {fit[f'{name}_peak_rss']:.2f} "
                  f"(above the pre-stage RSS {fit[f'{name}_peak_growth']:.2f})")
    if not args.no_plot and rows:
        title = f"AC-GDL clustering stage ({Path(recipe).name}), {device}, {info['cpu']} x{info['cores']}"
        plot(rows, args.plot, title)
        print(f"wrote {args.plot}")
    return fit


if __name__ == "__main__":
    main()
