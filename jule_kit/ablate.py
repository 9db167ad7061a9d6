"""``julekit ablate``: run recipes with plugins swapped, over several seeds, and tabulate.

A *variant* is the recipe as is (``baseline``) or the recipe with one plugin per swapped
kind replaced, exactly as ``--set <kind>=<name>`` would (the swapped plugin starts from its
defaults). Several names for one kind give several variants; several kinds give their
cartesian product. Every (recipe, variant, seed) runs into
``OUT/<recipe>/<variant>/seed<k>/`` with seed = the recipe's seed + k; a finished run of the
same recipe is reused and an interrupted one resumed (``study.run_or_reuse``), so an interrupted
or extended ablation only runs what is missing; a folder holding other settings stops the
ablation before anything runs. The tables go to ``OUT/summary.{csv,json,md,png}``.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import DataError, JulekitError
from .hookspecs import KINDS
from .metrics import mean_std
from .paths import find_recipe, shipped_recipes
from .rundir import RunDir, atomic_write_bytes, atomic_write_text
from .study import REUSED, Outcome, look, run_or_reuse

BASELINE = "baseline"
METRICS = ("nmi", "acc", "ari")
CSV_COLUMNS = ("recipe", "dataset", "variant", "seed", "nmi", "acc", "ari", "seconds", "run_dir")


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline", "linkage=average", "backbone=timm:resnet18+linkage=average"
    overrides: tuple[str, ...] = ()

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.name)


@dataclass
class Job:
    recipe_name: str
    recipe_path: Path
    variant: Variant
    k: int
    seed: int
    recipe: dict  # validated
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.recipe_name} {self.variant.name} seed {self.seed}"


@dataclass
class Ablation:
    out: Path
    recipes: list[tuple[str, Path]]
    variants: list[Variant]
    seeds: int
    jobs: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # default recipes whose data is missing


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


def parse_swaps(swaps: dict[str, Iterable[str]]) -> dict[str, list[str]]:
    """``{"linkage": ["average,gdl"]}`` -> ``{"linkage": ["average", "gdl"]}`` (kinds in KINDS order)."""
    out: dict[str, list[str]] = {}
    for kind in KINDS:
        names: list[str] = []
        for text in swaps.get(kind) or []:
            parts = [p.strip() for p in str(text).split(",")]
            if not all(parts):
                raise JulekitError(f"--{kind} {text!r}: expected a comma-separated list of {kind} plugin names")
            names += [p for p in parts if p not in names]
        if names:
            out[kind] = names
    unknown = set(swaps) - set(KINDS)
    if unknown:
        raise JulekitError(f"unknown plugin kind(s) {', '.join(sorted(unknown))}; expected {', '.join(KINDS)}")
    return out


def make_variants(swaps: dict[str, list[str]]) -> list[Variant]:
    """The baseline, then one variant per element of the cartesian product of the swaps."""
    variants = [Variant(BASELINE)]
    if not swaps:
        return variants
    kinds = list(swaps)
    for combo in itertools.product(*(swaps[k] for k in kinds)):
        pairs = [f"{kind}={name}" for kind, name in zip(kinds, combo)]
        variants.append(Variant("+".join(pairs), tuple(pairs)))
    return variants


def default_recipes() -> list[Path]:
    return [p for p in shipped_recipes() if p.name.startswith("jule_")]


def plan(out: Path, recipes: list[str] | None, swaps: dict[str, list[str]], seeds: int,
         overrides: list[str], data_dir: str | None = None) -> Ablation:
    """Validate every (recipe, variant, seed) before anything runs; raise JulekitError on bad input."""
    from .data import resolve
    from .recipe import load_recipe

    if seeds < 1:
        raise JulekitError(f"--seeds: expected at least 1, got {seeds}")
    explicit = bool(recipes)
    paths = [find_recipe(r) for r in recipes] if explicit else default_recipes()
    if not paths:
        raise JulekitError("no recipes to ablate: give --recipe FILE (shipped recipes were not found)")
    names: dict[str, Path] = {}
    for path in paths:
        name = path.stem
        if name in names and names[name].resolve() != path.resolve():
            raise JulekitError(f"--recipe: two recipes are named {name!r} ({names[name]} and {path}); "
                               f"their runs would share {Path(out) / name}; rename one")
        names[name] = path
    variants = make_variants(swaps)
    ablation = Ablation(out=Path(out), recipes=[], variants=variants, seeds=seeds)
    for name, path in names.items():
        base = load_recipe(path, list(overrides))
        try:
            resolve(base["data"]["name"], data_dir)
        except DataError as exc:
            if explicit:
                raise JulekitError(f"{path}: {exc}") from None
            ablation.skipped.append(f"{name} ({base['data']['name']} not found)")
            continue
        ablation.recipes.append((name, path))
        for variant in variants:
            first = load_recipe(path, [*overrides, *variant.overrides])
            for k in range(seeds):
                seed = first["seed"] + k
                recipe = load_recipe(path, [*overrides, *variant.overrides, f"seed={seed}"])
                ablation.jobs.append(Job(name, path, variant, k, seed, recipe,
                                         ablation.out / name / variant.dirname / f"seed{k}"))
    if not ablation.jobs:
        raise JulekitError("no recipe has its dataset on the data path: " + "; ".join(ablation.skipped)
                           + " (set --data-dir or $JULEKIT_DATA)")
    return ablation


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


STALE_HINT = "use another --out, or --force to run everything again"


def run_job(job: Job, data_dir: str | None, force: bool) -> Outcome:
    """Reuse the finished run of this job, resume an interrupted one of the same recipe, or run it."""
    from .engine import Experiment
    from .progress import Reporter

    def run(run_dir: RunDir, resume: bool) -> dict:
        experiment = Experiment(job.recipe, run_dir, data_dir=data_dir, reporter=Reporter(quiet=True),
                                recipe_name=job.recipe_name)
        return experiment.run(resume=resume).summary

    return run_or_reuse(run, job.run_dir, job.recipe, force=force, hint=STALE_HINT)


def row_of(job: Job, summary: dict) -> dict:
    row: dict[str, Any] = {"recipe": job.recipe_name, "dataset": summary.get("dataset", job.recipe["data"]["name"]),
                           "variant": job.variant.name, "seed": job.seed}
    for key in METRICS:
        value = summary.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else None
    row["seconds"] = float(summary.get("seconds", float("nan")))
    row["run_dir"] = str(job.run_dir)
    return row


# --------------------------------------------------------------------------------------
# Aggregating and writing
# --------------------------------------------------------------------------------------


def aggregate(rows: list[dict], recipes: list[str], variants: list[str]) -> list[dict]:
    out = []
    for recipe in recipes:
        for variant in variants:
            group = [r for r in rows if r["recipe"] == recipe and r["variant"] == variant]
            if not group:
                continue
            agg: dict[str, Any] = {"recipe": recipe, "dataset": group[0]["dataset"], "variant": variant,
                                   "runs": len(group), "seeds": [r["seed"] for r in group]}
            for key in (*METRICS, "seconds"):
                agg[f"{key}_mean"], agg[f"{key}_std"] = mean_std([r[key] for r in group])
            out.append(agg)
    return out


def cell(agg: dict | None, key: str, digits: int = 3) -> str:
    if agg is None or agg.get(f"{key}_mean") is None:
        return "-"
    return f"{agg[f'{key}_mean']:.{digits}f} ± {agg[f'{key}_std']:.{digits}f}"


def _lookup(aggs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(a["recipe"], a["variant"]): a for a in aggs}


def markdown(ablation: Ablation, aggs: list[dict], command: str) -> str:
    found = _lookup(aggs)
    variants = [v.name for v in ablation.variants]
    datasets = {a["recipe"]: a["dataset"] for a in aggs}
    lines = [
        "# Ablation", "",
        f"`{command}`", "",
        f"Mean ± sample standard deviation over {ablation.seeds} seed(s) (seed = the recipe's seed + k). "
        "`baseline` is the recipe as is; the other columns swap the named plugins "
        "(`--set <kind>=<name>`, the plugin's default settings).", "",
    ]
    for title, key, digits in (("NMI", "nmi", 3), ("ACC", "acc", 3), ("Time (s, the run's `seconds`)", "seconds", 1)):
        lines += [f"## {title}", "", "| recipe | dataset | " + " | ".join(variants) + " |",
                  "|---|---|" + "---|" * len(variants)]
        for recipe, _ in ablation.recipes:
            cells = [cell(found.get((recipe, v)), key, digits) for v in variants]
            lines.append(f"| {recipe} | {datasets.get(recipe, '-')} | " + " | ".join(cells) + " |")
        lines.append("")
    if ablation.skipped:
        lines += ["Skipped (dataset not found): " + ", ".join(ablation.skipped), ""]
    return "\n".join(lines)


def bar_chart(ablation: Ablation, aggs: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = _lookup(aggs)
    recipes = [r for r, _ in ablation.recipes]
    variants = [v.name for v in ablation.variants]
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 3.0 + len(recipes) * (0.5 + 0.45 * len(variants))), 4.0))
    for j, variant in enumerate(variants):
        xs, hs, es = [], [], []
        for i, recipe in enumerate(recipes):
            a = found.get((recipe, variant))
            if a is None or a["nmi_mean"] is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            hs.append(a["nmi_mean"])
            es.append(a["nmi_std"])
        bars = ax.bar(xs, hs, width, yerr=es, capsize=3, label=variant)
        ax.bar_label(bars, labels=[f"{h:.3f}" for h in hs], fontsize=7, padding=2)
    datasets = {a["recipe"]: a["dataset"] for a in aggs}
    ax.set_xticks(range(len(recipes)))
    ax.set_xticklabels([f"{r}\n({datasets.get(r, '-')})" for r in recipes], fontsize=8)
    ax.set_ylabel("NMI")
    ax.set_ylim(0, 1.1)
    ax.set_title(f"NMI, mean ± std over {ablation.seeds} seed(s)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="variant", title_fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(ablation: Ablation, rows: list[dict], command: str) -> list[dict]:
    recipes = [r for r, _ in ablation.recipes]
    variants = [v.name for v in ablation.variants]
    aggs = aggregate(rows, recipes, variants)
    out = ablation.out
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS})
    atomic_write_text(out / "summary.csv", buf.getvalue())
    data = {
        "command": command,
        "seeds": ablation.seeds,
        "recipes": {name: str(path) for name, path in ablation.recipes},
        "variants": {v.name: list(v.overrides) for v in ablation.variants},
        "skipped": ablation.skipped,
        "std": "sample standard deviation (ddof = 1); 0 for a single seed",
        "runs": rows,
        "aggregate": aggs,
    }
    atomic_write_text(out / "summary.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown(ablation, aggs, command))
    atomic_write_bytes(out / "summary.png", bar_chart(ablation, aggs))
    return aggs


def live_table(ablation: Ablation, rows: list[dict]):
    from rich.table import Table

    recipes = [r for r, _ in ablation.recipes]
    variants = [v.name for v in ablation.variants]
    found = _lookup(aggregate(rows, recipes, variants))
    table = Table(title=f"NMI (mean ± std over seeds done; {len(rows)}/{len(ablation.jobs)} runs)")
    table.add_column("recipe")
    for v in variants:
        table.add_column(v, justify="right", overflow="fold")
    for recipe in recipes:
        cells = []
        for v in variants:
            a = found.get((recipe, v))
            cells.append("-" if a is None else f"{cell(a, 'nmi')} ({a['runs']}/{ablation.seeds})")
        table.add_row(recipe, *cells)
    return table


def run_ablation(ablation: Ablation, *, data_dir: str | None = None, force: bool = False, command: str = "",
                 console=None) -> list[dict]:
    """Run (or reuse) every job in order, printing progress and the table; write the summaries."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    ablation.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ablation.out / "ablation.yaml", yaml.safe_dump(
        {"command": command, "seeds": ablation.seeds,
         "recipes": {n: str(p) for n, p in ablation.recipes},
         "variants": {v.name: list(v.overrides) for v in ablation.variants}}, sort_keys=False))
    for job in ablation.jobs:  # a stale run directory stops the ablation before anything runs
        if not force:
            look(job.run_dir, job.recipe, hint=STALE_HINT)
    for s in ablation.skipped:
        console.print(f"skipped {s}", highlight=False, markup=False)
    rows: list[dict] = []
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    try:
        with progress:
            _run_jobs(ablation, rows, progress, console, data_dir, force)
    finally:
        if rows:  # also after an interruption: the tables of what has finished
            aggs = write_outputs(ablation, rows, command)
    console.print(f"wrote {ablation.out / 'summary.md'}, summary.csv, summary.json, summary.png",
                  highlight=False, markup=False, soft_wrap=True)
    return aggs


def _run_jobs(ablation: Ablation, rows: list[dict], progress, console, data_dir: str | None, force: bool) -> None:
    n = len(ablation.jobs)
    task = progress.add_task("ablation", total=n)
    for i, job in enumerate(ablation.jobs, 1):
        head = f"run {i}/{n}: {job.label}"
        progress.update(task, description=head)
        t0 = time.time()
        outcome = run_job(job, data_dir, force)
        status = outcome.status if outcome.status == REUSED else f"{outcome.status} in {time.time() - t0:.1f} s"
        row = row_of(job, outcome.summary)
        rows.append(row)
        scores = "  ".join(f"{k.upper()} {row[k]:.4f}" for k in METRICS if row[k] is not None)
        console.print(f"{head}: {status}  {scores}  ({row['seconds']:.1f} s)", highlight=False, markup=False,
                      soft_wrap=True)
        console.print(live_table(ablation, rows))
        progress.advance(task)
