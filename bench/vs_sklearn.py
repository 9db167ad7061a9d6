"""julekit AC-GDL (recipes/ac_gdl_mnist_full.yaml) vs scikit-learn average linkage on the same 20-NN graph.

    python bench/vs_sklearn.py                  # all 70,000 MNIST images
    python bench/vs_sklearn.py --quick          # the recipe's seeded 10,000-image subset (about a minute)
    python bench/vs_sklearn.py --n 20000 --json runs/vs_sklearn_20k.json

julekit runs the recipe's clustering stage in one child process (kNN graph, path-integral initial
clusters, GDL merges down to 10 clusters, each timed); its 20-NN graph is saved and handed to a
second child that fits ``AgglomerativeClustering(linkage="average", connectivity=<that graph,
symmetrised>)`` on the same L2-normalised pixels. Separate processes give separate peak RSS figures.
If scikit-learn runs past --sklearn-timeout, or its estimated peak memory (three nnz x D arrays:
it gathers both ends of every edge) would not fit in the memory available on this shared machine,
both are measured on smaller subsets instead and scikit-learn's time and peak at N are extrapolated
with the measured log-log growth (and labelled so).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from clusterbench import (DEFAULT_RECIPE, gb, load_avg, loglog_slope, machine_info,  # noqa: E402
                          mem_available_bytes, run_child, sklearn_peak_estimate, symmetric_connectivity)

TARGET_SPEEDUP, TARGET_SECONDS, TARGET_PEAK_GB = 5.0, 150.0, 3.0  # the CPU targets (PERFORMANCE.md §1)


def measure(n: int | None, recipe: str, data_dir: str | None, sklearn_timeout: float | None,
            memory_guard: bool = True, overrides: list[str] | None = None) -> tuple[dict, dict | None, dict]:
    """julekit, then scikit-learn on julekit's graph, at ``n`` images (None: all).

    Returns (julekit, sklearn or None when skipped / timed out, notes on sklearn's run).
    """
    with tempfile.TemporaryDirectory() as tmp:
        graph = str(Path(tmp) / "knn_indices.npy")
        base = {"data": "mnist", "n": n, "recipe": recipe, "data_dir": data_dir, "overrides": overrides or []}
        jk = run_child({**base, "kind": "julekit", "graph_out": graph, "device": "cpu"})
        nnz = int(symmetric_connectivity(np.load(graph)).nnz)
        need = jk["baseline_rss_bytes"] + sklearn_peak_estimate(nnz, jk["dim"])
        notes = {"connectivity_nnz": nnz, "estimated_peak_rss_bytes": need, "mem_available_bytes": mem_available_bytes()}
        # the machine is shared: do not start a child that would push other jobs into the OOM killer
        if memory_guard and need > 0.85 * notes["mem_available_bytes"]:
            notes["skipped"] = (f"estimated peak {gb(need):.1f} GB > 85% of the {gb(notes['mem_available_bytes']):.1f} GB "
                                "available")
            return jk, None, notes
        sk = run_child({**base, "kind": "sklearn", "graph_in": graph}, timeout=sklearn_timeout)
        if sk is None:
            notes["skipped"] = f"ran past {sklearn_timeout:.0f} s and was stopped"
    return jk, sk, notes


def ratios(jk: dict, sk_fit: float) -> dict[str, float]:
    graph = jk["parts"]["knn_graph"]
    return {
        # both methods need the kNN graph, so the end-to-end ratio charges it to each
        "speedup_end_to_end": (graph + sk_fit) / jk["seconds"],
        # what is left once the shared graph exists: sklearn's fit vs julekit's init + merging
        "speedup_after_graph": sk_fit / max(jk["seconds"] - graph, 1e-9),
    }


def report(jk: dict, sk: dict | None, sk_fit: float, extrapolated: bool) -> None:
    p = jk["parts"]
    print(f"N = {jk['n']} images x {jk['dim']} features; load before/after julekit {jk['load_before']} / "
          f"{jk['load_after']}")
    print(f"julekit AC-GDL   total {jk['seconds']:8.1f} s = kNN graph {p['knn_graph']:.1f} s + initial clusters "
          f"{p['initial_clusters']:.2f} s + GDL table {p['gdl_table']:.2f} s + merging {p['merging']:.1f} s "
          f"(+ L2 rows {p['prepare']:.2f} s)")
    print(f"julekit NMI      {jk['nmi']:.4f}   clusters {jk['n_clusters']}   peak RSS {gb(jk['peak_rss_bytes']):.2f} GB "
          f"(after loading the data {gb(jk['baseline_rss_bytes']):.2f} GB)")
    label = "extrapolated" if extrapolated else "measured"
    print(f"shared kNN graph {p['knn_graph']:8.1f} s (julekit's 20-NN graph, handed to scikit-learn)")
    print(f"sklearn average  fit   {sk_fit:8.1f} s ({label}); graph + fit {p['knn_graph'] + sk_fit:.1f} s")
    if sk is not None:
        print(f"sklearn NMI      {sk['nmi']:.4f}   clusters {sk['n_clusters']}   peak RSS {gb(sk['peak_rss_bytes']):.2f} GB "
              f"(after loading the data {gb(sk['baseline_rss_bytes']):.2f} GB)   load before/after "
              f"{sk['load_before']} / {sk['load_after']}")
        for w in sk["warnings"]:
            print(f"  sklearn warning: {w}")
    else:
        print("sklearn NMI      not measured at this N (see the smaller sizes above)")
    r = ratios(jk, sk_fit)
    print(f"speed ratio      sklearn (graph + fit) / julekit total = {r['speedup_end_to_end']:.2f}x; "
          f"after the shared graph: sklearn fit / julekit (init + merging) = {r['speedup_after_graph']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="images: the recipe's seeded subset of N (default: all)")
    parser.add_argument("--quick", action="store_true", help="N = 10000 unless --n is given (about a minute)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for julekit's run, e.g. --set affinity.knn=kmeans_tree (repeatable)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sklearn-timeout", type=float, default=900.0,
                        help="seconds after which scikit-learn at N is stopped and extrapolated instead")
    parser.add_argument("--no-memory-guard", action="store_true",
                        help="run scikit-learn even when its estimated peak exceeds 85%% of the available memory")
    parser.add_argument("--extrapolate-sizes", default="10000,20000,40000",
                        help="subset sizes measured when scikit-learn times out at N")
    args = parser.parse_args()
    n = args.n if args.n is not None else (10_000 if args.quick else None)

    load_start = load_avg()
    jk, sk, notes = measure(n, args.recipe, args.data_dir, args.sklearn_timeout, not args.no_memory_guard,
                           args.overrides)
    out: dict = {"machine": machine_info(), "load_start": load_start, "recipe": args.recipe,
                 "overrides": args.overrides,
                 "command": " ".join(["python", *sys.argv]), "julekit": jk, "sklearn": sk, "sklearn_notes": notes}
    extrapolated = sk is None
    if extrapolated:
        sizes = [s for s in (int(v) for v in args.extrapolate_sizes.split(",")) if s < jk["n"]]
        print(f"scikit-learn at N = {jk['n']}: {notes['skipped']}; measuring N = {sizes} and extrapolating",
              flush=True)
        steps = []
        for s in sizes:
            jk_s, sk_s, _ = measure(s, args.recipe, args.data_dir, None, not args.no_memory_guard, args.overrides)
            if sk_s is None:
                raise SystemExit(f"scikit-learn cannot run at N = {s} either (memory); lower --extrapolate-sizes")
            steps.append({"n": s, "julekit": jk_s, "sklearn": sk_s})
            print(f"  N = {s}: julekit {jk_s['seconds']:.1f} s (NMI {jk_s['nmi']:.4f}), sklearn fit "
                  f"{sk_s['seconds']:.1f} s (NMI {sk_s['nmi']:.4f})", flush=True)
        ns = [st["n"] for st in steps]
        slope = loglog_slope(ns, [st["sklearn"]["seconds"] for st in steps])
        extra = [st["sklearn"]["peak_rss_bytes"] - st["sklearn"]["baseline_rss_bytes"] for st in steps]
        mem_slope = loglog_slope(ns, extra)
        last = steps[-1]
        scale = jk["n"] / last["n"]
        sk_fit = last["sklearn"]["seconds"] * scale**slope
        peak = jk["baseline_rss_bytes"] + extra[-1] * scale**mem_slope
        out["sklearn_extrapolation"] = {"sizes": steps, "loglog_slope": slope, "fit_seconds_at_n": sk_fit,
                                        "memory_loglog_slope": mem_slope, "peak_rss_bytes_at_n": peak}
        print(f"  sklearn fit time grows as N^{slope:.2f}: about {sk_fit:.0f} s at N = {jk['n']}; its memory above "
              f"the data as N^{mem_slope:.2f}: peak about {gb(peak):.1f} GB (edge-gather estimate "
              f"{gb(notes['estimated_peak_rss_bytes']):.1f} GB)")
    else:
        sk_fit = sk["seconds"]
    out.update(ratios(jk, sk_fit), sklearn_fit_seconds=sk_fit, sklearn_extrapolated=extrapolated,
               load_end=load_avg())
    report(jk, sk, sk_fit, extrapolated)

    # the targets, stated plainly: met or not
    out["targets"] = {
        f"julekit >= {TARGET_SPEEDUP:.0f}x faster than sklearn (end to end)": out["speedup_end_to_end"] >= TARGET_SPEEDUP,
        # NMIs are rounded as reported; None when sklearn's NMI at N was not measured
        "julekit NMI >= sklearn NMI": None if sk is None else round(jk["nmi"], 3) >= round(sk["nmi"], 3),
        f"julekit <= {TARGET_SECONDS:.0f} s": jk["seconds"] <= TARGET_SECONDS,
        f"julekit peak RSS <= {TARGET_PEAK_GB:.0f} GB": gb(jk["peak_rss_bytes"]) <= TARGET_PEAK_GB,
    }
    for k, v in out["targets"].items():
        print(f"target: {k}: {'unknown (sklearn NMI not measured at N)' if v is None else ('met' if v else 'NOT met')}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
