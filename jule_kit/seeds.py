"""One recipe over several seeds: ``julekit run RECIPE --seeds N``.

``OUT/seed<k>/`` is an ordinary run directory whose recipe has seed = the recipe's seed + k.
``OUT/recipe.yaml`` is the recipe every seed runs (with the first seed), ``OUT/seeds.json``
marks the folder as a multi-seed run, and ``OUT/summary.json`` holds mean ± standard
deviation of NMI / ACC / ARI / seconds and the *stability*: the mean (and worst) NMI between
the final assignments of every pair of seeds. A high score against the labels with low
stability means one run cannot be trusted on its own.

``julekit run --resume OUT`` reuses finished seeds, resumes an interrupted one from its
checkpoint and runs the missing ones (``study.run_or_reuse``); a seed folder whose stored recipe
differs from ``OUT/recipe.yaml`` stops it with one line naming the folder and the first
differing key, nothing overwritten.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import distributed
from .errors import JulekitError
from .metrics import mean_std, pairwise_nmi
from .recipe import dump
from .rundir import RECIPE, SUMMARY, RunDir, atomic_write_text
from .study import REUSED, run_or_reuse

SEEDS_FILE = "seeds.json"
METRICS = ("nmi", "acc", "ari")


def is_multi_seed(path: Path) -> bool:
    return (Path(path) / SEEDS_FILE).exists()


def seed_dir(out: Path, k: int) -> Path:
    return Path(out) / f"seed{k}"


@dataclass
class SeedRun:
    """The outcome of one seed: its summary and final assignments."""

    k: int
    seed: int
    summary: dict
    labels: np.ndarray
    reused: bool


def start(out: RunDir, recipe: dict, seeds: int, recipe_name: str) -> None:
    """Write the multi-seed markers into a fresh run directory."""
    if seeds < 1:
        raise JulekitError(f"--seeds: expected at least 1, got {seeds}")
    if not distributed.current().is_main:
        return
    atomic_write_text(out.file(RECIPE), dump(recipe))
    atomic_write_text(out.file(SEEDS_FILE), json.dumps({"seeds": seeds, "first_seed": recipe["seed"],
                                                                "recipe_name": recipe_name}) + "\n")


def load(out: Path) -> tuple[dict, int, str]:
    """The recipe, number of seeds and recipe name recorded in a multi-seed run directory."""
    from .recipe import load_recipe

    path = Path(out) / SEEDS_FILE
    try:
        recorded = json.loads(path.read_text())
        seeds, name = int(recorded["seeds"]), str(recorded.get("recipe_name", Path(out).name))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JulekitError(f"{path}: cannot read the number of seeds ({exc})") from None
    return load_recipe(Path(out) / RECIPE, []), seeds, name


def recipe_for(recipe: dict, k: int) -> dict:
    one = copy.deepcopy(recipe)
    one["seed"] = recipe["seed"] + k
    return one


def run_seed(run_one: Callable[[dict, RunDir, bool], dict], out: Path, recipe: dict, k: int,
             force: bool = False) -> SeedRun:
    """Reuse a finished seed of the same recipe, resume an interrupted one, or run it (``force``: run it).

    A seed folder holding other settings stops the run (StaleRunError), nothing overwritten."""
    one = recipe_for(recipe, k)
    folder = seed_dir(out, k)
    distributed.current().barrier()  # torchrun: every rank looks at the folder before rank 0 starts writing into it
    outcome = run_or_reuse(lambda run_dir, resume: run_one(one, run_dir, resume), folder, one, force=force,
                           hint=f"move it away to run that seed again with {Path(out) / RECIPE}")
    return SeedRun(k, one["seed"], outcome.summary, outcome.run_dir.read_assignments(),
                   reused=outcome.status == REUSED)


def aggregate(runs: list[SeedRun], recipe: dict, recipe_name: str) -> dict[str, Any]:
    """The multi-seed summary: per-seed rows, mean ± std, and the stability across seeds."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {"seed": r.seed, **{m: r.summary.get(m) for m in METRICS}}
        row.update(n_clusters=r.summary.get("n_clusters"), seconds=r.summary.get("seconds"),
                   run_dir=f"seed{r.k}", assignments_sha256=hashlib.sha256(r.labels.tobytes()).hexdigest())
        rows.append(row)
    first = runs[0].summary
    summary: dict[str, Any] = {
        "recipe_name": recipe_name,
        "dataset": first.get("dataset"),
        "n_samples": first.get("n_samples"),
        "device": first.get("device"),
        "seeds": [r.seed for r in runs],
    }
    for key in (*METRICS, "seconds"):
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean_std([row[key] for row in rows])
    summary["seconds_total"] = sum(row["seconds"] or 0.0 for row in rows)
    pairs = pairwise_nmi([r.labels for r in runs])
    summary["stability_nmi_mean"] = float(np.mean(pairs)) if pairs else None
    summary["stability_nmi_min"] = float(np.min(pairs)) if pairs else None
    summary["std"] = "sample standard deviation over seeds (ddof = 1; 0 for one seed)"
    summary["stability"] = "NMI between the final assignments of every pair of seeds: mean and minimum"
    summary["runs"] = rows
    summary["recipe"] = recipe
    return summary


def headline(summary: dict) -> str:
    """One line: mean ± std of each metric and the stability."""
    n = len(summary["seeds"])
    parts = [f"{summary['recipe_name']}: {n} seed{'s' if n != 1 else ''} on {summary['n_samples']} samples"]
    for key in METRICS:
        if summary.get(f"{key}_mean") is not None:
            parts.append(f"{key.upper()} {summary[f'{key}_mean']:.4f} ± {summary[f'{key}_std']:.4f}")
    if summary.get("stability_nmi_mean") is not None:
        parts.append(f"stability {summary['stability_nmi_mean']:.4f} (min {summary['stability_nmi_min']:.4f})")
    parts.append(f"{summary['seconds_mean']:.1f} s/seed on {summary['device']}")
    return "  ".join(parts)


def run_seeds(run_one: Callable[[dict, RunDir, bool], dict], out: RunDir, recipe: dict, seeds: int,
              recipe_name: str, on_seed: Callable[[SeedRun], None] | None = None, force: bool = False) -> dict:
    """Run (or reuse) every seed in order, then write and return ``OUT/summary.json``.

    ``run_one(recipe, run_dir, resume)`` runs one seed and returns its summary; ``force`` runs
    every seed again (``julekit run --force``) instead of reusing what ``out`` holds.
    """
    runs = []
    for k in range(seeds):
        result = run_seed(run_one, out.path, recipe, k, force=force)
        runs.append(result)
        if on_seed is not None:
            on_seed(result)
    summary = aggregate(runs, recipe, recipe_name)
    out.write_json(SUMMARY, summary)
    return summary
