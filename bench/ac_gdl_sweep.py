"""Sweep AC-GDL settings (feature normalisation, K_c, update, a, K_s) on one dataset and print NMI.

    python bench/ac_gdl_sweep.py usps [--data-dir DIR]

This is how the ``recipes/ac_gdl_*.yaml`` settings were chosen (see docs/RESULTS.md).
"""
from __future__ import annotations

import argparse
import itertools
import time

from jule_kit.data import load_dataset
from jule_kit.engine import Experiment
from jule_kit.recipe import load_recipe
from jule_kit.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--k-s", default="20", help="comma-separated K_s values")
    args = parser.parse_args()
    load_dataset(args.dataset, data_dir=args.data_dir)  # fail early with a clear message
    print("| normalize | k_s | k_c | update | a | NMI | seconds |\n|---|---|---|---|---|---|---|")
    grid = itertools.product(["none", "l2"], [int(k) for k in args.k_s.split(",")], [1, 5],
                             ["exact", "fast"], [0.5, 1.0, 2.0])
    import tempfile

    for norm, k_s, k_c, update, a in grid:
        overrides = [f"data={args.dataset}", f"affinity.normalize={norm}", f"affinity.k_s={k_s}",
                     f"affinity.a={a}", f"clusterer.k_c={k_c}", f"linkage.update={update}", "device=cpu"]
        recipe = load_recipe("recipes/ac_gdl_usps.yaml", overrides)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            summary = Experiment(recipe, RunDir.create(tmp, force=True), data_dir=args.data_dir).run().summary
        print(f"| {norm} | {k_s} | {k_c} | {update} | {a} | {summary['nmi']:.4f} | {time.time() - start:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
