"""A finished run's network on another dataset: the final stage period by period, with variants.

    python bench/final_stage_transfer.py runs/jule_mnist_test --data mnist_full
    python bench/final_stage_transfer.py runs/jule_mnist_test --data mnist_full \\
        --variant clusterer.final_outlier_fraction=0 --variant ""

Extracts the features of every image of --data with the run's last checkpoint (batch-norm
statistics refreshed on those images, as the final stage does), then runs the final stage of the
run's recipe (each --variant: ';'-separated overrides of it, "" = as it is) and prints every
period: clusters before and after, NMI, the largest and the smallest cluster sizes. A network
trained on MNIST-test gives MNIST-full features of about the quality of a MNIST-full run's own, in
minutes instead of hours: the way to study the final stage at 70,000 images.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jule_kit.engine import Experiment  # noqa: E402
from jule_kit.metrics import nmi  # noqa: E402
from jule_kit.recipe import load_recipe  # noqa: E402
from jule_kit.rundir import RECIPE, RunDir  # noqa: E402


def transferred_features(run: Path, data: str, scratch: Path, data_dir: str | None) -> tuple[torch.Tensor, np.ndarray]:
    state = RunDir(run).load_checkpoint()
    if state is None or "model" not in state:
        raise SystemExit(f"{run}: no checkpoint with a network")
    recipe = load_recipe(run / RECIPE, [f"data.name={data}"])
    experiment = Experiment(recipe, RunDir.create(scratch / "features", force=True), data_dir=data_dir)
    dataset = experiment.load_data()
    model = experiment.build_model(dataset)
    model.load_state_dict(state["model"])
    features = experiment.features(model, torch.as_tensor(dataset.images), int(state["period"]) + 1, refresh_bn=True)
    return features, np.asarray(dataset.labels)


def traced_final_stage(run: Path, overrides: list[str], features: torch.Tensor, truth: np.ndarray,
                       scratch: Path) -> np.ndarray:
    recipe = load_recipe(run / RECIPE, overrides)
    experiment = Experiment(recipe, RunDir.create(scratch / "final", force=True))
    clusterer = experiment.plugins.clusterer
    period = clusterer.period

    def traced(features, graph, labels, ctx, target=None):
        out = period(features, graph, labels, ctx, target)
        sizes = np.sort(np.bincount(out))[::-1]
        print(f"    {labels.max() + 1} -> {out.max() + 1} clusters: NMI {nmi(truth, out):.3f}, largest "
              f"{sizes[:5].tolist()}, smallest {sizes[-4:].tolist()}", flush=True)
        return out

    clusterer.period = traced
    target = int(truth.max()) + 1 if recipe["clusters"] is None else recipe["clusters"]
    return clusterer.finalize(experiment.plugins.affinity.prepare(features), None, experiment.context(0, target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--data", required=True, help="the dataset to cluster with the run's network")
    parser.add_argument("--data-dir", default=None, help="folder to look for datasets in first")
    parser.add_argument("--variant", action="append", default=None,
                        help="';'-separated overrides of the run's recipe; repeat for several (default: as it is)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        features, truth = transferred_features(args.run, args.data, scratch, args.data_dir)
        for variant in args.variant or [""]:
            overrides = [o for o in variant.split(";") if o]
            print(f"{args.run} on {args.data}, {' '.join(overrides) or 'the run recipe as it is'}:", flush=True)
            started = time.time()
            labels = traced_final_stage(args.run, overrides, features, truth, scratch)
            sizes = np.sort(np.bincount(labels))[::-1]
            print(f"  final: NMI {nmi(truth, labels):.3f}, sizes {sizes.tolist()}, "
                  f"{time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
