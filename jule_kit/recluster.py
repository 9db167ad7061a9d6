"""``julekit recluster``: the final stage again, on a finished run's network, with other settings.

The network of the last checkpoint gives the final features exactly as the run computed
them (same batch-norm handling, same seed of the final stage), so re-clustering with the
run's own settings reproduces its ``assignments.csv``, and any other final stage (linkage,
graph, criterion, ``clusterer.final``) is compared on the very same features in seconds.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .engine import Experiment
from .errors import JulekitError
from .progress import Reporter
from .recipe import dump, load_recipe
from .rundir import RECIPE, SUMMARY, RunDir, atomic_write_text

# what the final stage depends on; any other key would need the joint loop to be re-run
FINAL_STAGE_KEYS = ("clusterer", "linkage", "affinity", "initializer", "clusters", "device", "deterministic",
                    "train.final_bn", "train.feature_mode", "train.feature_batch_size")
DERIVED = "derived_from"


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or key.startswith(k + ".") for k in FINAL_STAGE_KEYS):
            raise JulekitError(
                f"--set {item}: recluster re-runs only the final stage on the trained network, and {key} changes "
                f"the joint loop; allowed keys: {', '.join(FINAL_STAGE_KEYS)} (to change {key}, run the recipe again)"
            )


def recluster(source: Path, out: Path, overrides: list[str], *, data_dir: str | None = None,
              reporter: Reporter | None = None, force: bool = False) -> dict:
    """Re-run the final stage of the finished run in ``source`` into a new run directory ``out``."""
    _check_overrides(overrides)
    if not (source / RECIPE).exists():
        raise JulekitError(f"{source}: not a julekit run directory (no {RECIPE})")
    src = RunDir(source)
    if not src.file(SUMMARY).exists():
        raise JulekitError(f"{source}: the run has not finished (no {SUMMARY}); finish it with "
                           f"julekit run --resume {source}, then recluster it")
    state = src.load_checkpoint()
    if state is None:
        raise JulekitError(f"{source}: no checkpoint.pt to take the trained network from")
    recipe = load_recipe(source / RECIPE, overrides)
    if out.resolve() == source.resolve():
        raise JulekitError(f"--out {out}: is the run being re-clustered; choose another folder")
    run_dir = RunDir.create(out, force=force)
    experiment = Experiment(recipe, run_dir, data_dir=data_dir, reporter=reporter,
                            recipe_name=f"{source.name}-recluster")
    with experiment.deterministic():
        started = time.time()
        data = experiment.load_data()
        target = experiment.target_clusters(data)
        images = torch.as_tensor(data.images).to(experiment.device)
        model = experiment.build_model(data)
        if model is not None:
            if "model" not in state:
                raise JulekitError(f"{source}: its checkpoint holds no network (the run had no backbone) but "
                                   "the recipe now has one")
            model.load_state_dict(state["model"])
        atomic_write_text(run_dir.file(RECIPE), dump(recipe))
        # the joint loop's rows stay, so SF (its last period) and the new final stage sit side by side
        rows = [r for r in src.read_metrics() if isinstance(r.get("period"), int)]
        labels, final_row, _ = experiment.final_stage(model, images, state["labels"], state["period"] + 1,
                                                      target, data)
        rows.append(final_row)
        experiment.write_final(rows, labels, data)
        summary = experiment.summary(data, labels, rows, final_row, time.time() - started)
    summary[DERIVED] = {"run": str(source), "checkpoint_period": int(state["period"]), "overrides": overrides}
    run_dir.write_json(SUMMARY, summary)
    return summary
