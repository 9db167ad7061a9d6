"""Reproduce the JULE paper's NMI table: JULE and the raw-intensity baselines, several seeds.

Runs ``julekit run recipes/<method>_<dataset>.yaml --seeds N --out OUT/<method>_<dataset>`` for
every method and dataset (each in its own process, as a user would), reuses finished runs of the
recipe as it reads now, resumes interrupted ones, runs a cell made from other settings again
(the old folder kept as ``<cell>.stale-<time>``), and writes the table into docs/RESULTS.md
between the ``<!-- reproduce:begin -->`` / ``<!-- reproduce:end -->`` markers (the rest of the
file is kept). Each row names the julekit version and git commit its runs were made with.

    python bench/reproduce.py                       # everything this machine can run
    python bench/reproduce.py --datasets usps,umist --methods jule --seeds 3
    python bench/reproduce.py --device cuda --datasets coil100,mnist_full --methods jule
    python bench/reproduce.py --table-only          # rewrite the table from the runs on disk

A cell whose runs are not on this machine (a fresh checkout, another machine's runs) keeps its row
from the table already in RESULTS.md, marked "kept": the table is the record, the runs are local.

JULE on coil100 and mnist_full is skipped on CPU (hours on 2 cores) unless --allow-slow-cpu;
datasets not on the data path (FRGC, YTF here) are listed as not available.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
sys.path.insert(0, str(REPO))

from jule_kit.data import resolve  # noqa: E402
from jule_kit.errors import DataError  # noqa: E402
from jule_kit.recipe import load_recipe  # noqa: E402
from jule_kit.rundir import SUMMARY, RunDir  # noqa: E402
from jule_kit.seeds import SEEDS_FILE  # noqa: E402
from jule_kit.study import REUSED, StaleRunError, run_or_reuse, set_aside  # noqa: E402

DATASETS = ("coil20", "coil100", "usps", "mnist_test", "mnist_full", "umist", "frgc", "cmu_pie", "ytf")
METHODS = ("jule", "kmeans", "ac_link", "ac_gdl")
METHOD_NAMES = {"jule": "JULE-RC", "kmeans": "K-means", "ac_link": "AC-Link", "ac_gdl": "AC-GDL"}
# NMI from the paper's Table (raw intensities for the baselines; AC-GDL: the paper's own run)
PAPER = {
    "kmeans": dict(zip(DATASETS, (0.775, 0.822, 0.447, 0.528, 0.500, 0.609, 0.389, 0.549, 0.761))),
    "ac_link": dict(zip(DATASETS, (0.512, 0.711, 0.579, 0.662, 0.686, 0.643, 0.168, 0.545, 0.738))),
    "ac_gdl": dict(zip(DATASETS, (0.945, 0.954, 0.854, 0.864, 0.017, 0.755, 0.351, 0.934, 0.622))),
    "jule": dict(zip(DATASETS, (1.000, 0.985, 0.913, 0.915, 0.913, 0.877, 0.574, 1.00, 0.848))),
}
PAPER_SF = dict(zip(DATASETS, (1.000, 0.978, 0.858, 0.876, 0.906, 0.880, 0.566, 0.984, 0.848)))
SLOW_ON_CPU = {("jule", "coil100"), ("jule", "mnist_full")}
BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def _shown(path: Path) -> str:
    # the shipped recipes as the README writes them (recipes/x.yaml, run from the checkout)
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def command_for(method: str, dataset: str, seeds: int, out: Path, device: str | None,
                recipes: Path = RECIPES) -> list[str]:
    return recipe_command(recipes / f"{method}_{dataset}.yaml", [], seeds, out, device)


def recipe_command(recipe: Path, sets: list[str], seeds: int, out: Path, device: str | None) -> list[str]:
    cmd = ["julekit", "run", _shown(recipe), *[a for s in sets for a in ("--set", s)], "--seeds", str(seeds),
           "--out", str(out)]
    return cmd + (["--device", device] if device else [])


def run_cell(method: str, dataset: str, seeds: int, out_root: Path, device: str | None,
             recipes: Path = RECIPES, data_dir: str | None = None) -> None:
    """Reuse the cell's finished run of the recipe as it reads now, resume it, or run it."""
    run_recipe(recipes / f"{method}_{dataset}.yaml", [], out_root / f"{method}_{dataset}", seeds, device, data_dir)


def run_recipe(recipe: Path, sets: list[str], out: Path, seeds: int, device: str | None,
               data_dir: str | None = None) -> dict:
    """Reuse the finished run of ``recipe`` with ``sets`` in ``out``, resume it, or run it; returns its summary.

    A folder made from other settings (the recipe file changed since) is set aside as
    ``<folder>.stale-<time>`` and run again into a fresh folder, never quoted."""
    wanted = load_recipe(recipe, list(sets) + ([f"device={device}"] if device else []))

    def run(_: RunDir, resume: bool) -> dict:
        if resume:
            recorded = out / SEEDS_FILE
            marker = json.loads(recorded.read_text())
            if marker["seeds"] < seeds:  # more seeds asked for: the finished ones are kept
                marker["seeds"] = seeds
                recorded.write_text(json.dumps(marker) + "\n")
            cmd = ["julekit", "run", "--resume", str(out)]
        else:
            cmd = recipe_command(recipe, sets, seeds, out, device)
        cmd += ["--data-dir", data_dir] if data_dir else []
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "jule_kit.cli", *cmd[1:]], cwd=REPO, check=True)
        return json.loads((out / SUMMARY).read_text())

    def enough(summary: dict) -> bool:
        return len(summary.get("seeds") or []) >= seeds

    try:
        outcome = run_or_reuse(run, out, wanted, complete=enough)
    except StaleRunError as stale:
        aside = set_aside(out)
        print(f"{stale}; set aside as {aside.name}, running the cell again", flush=True)
        outcome = run_or_reuse(run, out, wanted, complete=enough)
    if outcome.status == REUSED:
        print(f"{out.name}: reused ({len(outcome.summary['seeds'])} seeds)", flush=True)
    return outcome.summary


def cell_status(method: str, dataset: str, data_dir: str | None, device: str | None, allow_slow: bool) -> str | None:
    """Why this cell is not run here, or None when it is."""
    try:
        resolve(dataset, data_dir)
    except DataError:
        return "dataset not available on this machine"
    if (method, dataset) in SLOW_ON_CPU and device != "cuda" and not allow_slow:
        return "needs a GPU run (hours on 2 CPU cores)"
    return None


def seed_dirs(out: Path) -> list[Path]:
    """A multi-seed run's seed<i> folders, in seed order."""
    return sorted((p for p in out.glob("seed*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))


def sf_values(out: Path) -> list[float]:
    """JULE-SF of each seed: the last joint period's NMI (before the final RC stage)."""
    values = []
    for metrics in (d / "metrics.jsonl" for d in seed_dirs(out) if (d / "metrics.jsonl").is_file()):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        periods = [r for r in rows if isinstance(r.get("period"), int) and "nmi" in r]
        if periods:
            values.append(periods[-1]["nmi"])
    return values


def sf_nmi(out: Path) -> float | None:
    """JULE-SF: the mean over seeds of the last joint period's NMI."""
    values = sf_values(out)
    return sum(values) / len(values) if values else None


def fmt(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def made_with(out: Path, summary: dict) -> str:
    """The julekit version and git commit each seed's run was made with (several: seeds added later)."""
    found: list[str] = []
    for row in summary.get("runs", []):
        try:
            versions = json.loads((out / row["run_dir"] / SUMMARY).read_text()).get("versions") or {}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        text = str(versions.get("julekit", "?")) + (f" @ {versions['commit']}" if versions.get("commit") else "")
        found += [text] if text not in found else []
    return ", ".join(found) or "-"


KEPT = " (kept)"  # marks a row quoted from the previous table: its runs are not on this machine


def previous_rows(path: Path) -> dict[tuple[str, str], str]:
    """The measured rows of the table already in ``path``, by (dataset, method name)."""
    body = path.read_text() if path.exists() else ""
    if BEGIN not in body or END not in body:
        return {}
    rows = {}
    for line in body[body.index(BEGIN):body.index(END)].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[2].startswith("**"):  # a measured row, not "not run yet"
            rows[(cells[0], cells[1].split(" (")[0])] = line
    return rows


def _kept(line: str) -> str:
    cells = line.split("|")
    cells[11] = cells[11].rstrip().removesuffix(KEPT) + KEPT + " "  # the made-with column
    return "|".join(cells)


def table(out_root: Path, device: str | None, data_dir: str | None, allow_slow: bool,
          previous: dict[tuple[str, str], str] | None = None) -> str:
    previous = previous or {}
    lines = [
        "| dataset | method | ours NMI (mean ± std) | seeds | paper NMI | ours − paper | ACC | stability | s / seed | device | made with | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        for method in METHODS:
            paper = PAPER[method][dataset]
            summary_path = out_root / f"{method}_{dataset}" / SUMMARY
            name = f"{METHOD_NAMES[method]}"
            if method == "jule" and summary_path.exists():
                sf = sf_nmi(summary_path.parent)
                if sf is not None:
                    name += f" (SF {sf:.3f}; paper {PAPER_SF[dataset]:.3f})"
            if not summary_path.exists():
                if (dataset, name) in previous:
                    lines.append(_kept(previous[(dataset, name)]))
                    continue
                why = cell_status(method, dataset, data_dir, device, allow_slow) or "not run yet"
                lines.append(f"| {dataset} | {name} | {why} | | {paper:.3f} | | | | | | | |")
                continue
            s = json.loads(summary_path.read_text())
            cmd = shlex.join(command_for(method, dataset, len(s["seeds"]), Path(f"runs/reproduce/{method}_{dataset}"),
                                         None if "cpu" in str(s["device"]) else "cuda"))
            stability = "-" if s.get("stability_nmi_mean") is None else f"{s['stability_nmi_mean']:.3f}"
            delta = round(s["nmi_mean"] - paper, 3) + 0.0  # no "-0.000"
            lines.append(f"| {dataset} | {name} | **{fmt(s['nmi_mean'], s['nmi_std'])}** | {len(s['seeds'])} | "
                         f"{paper:.3f} | {delta:+.3f} | {fmt(s['acc_mean'], s['acc_std'])} | {stability} | "
                         f"{s['seconds_mean']:.1f} | {s['device']} | {made_with(summary_path.parent, s)} | `{cmd}` |")
    return "\n".join(lines)


def write_results(text: str, path: Path) -> None:
    body = path.read_text() if path.exists() else "# Results\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        body = body[:body.index(BEGIN)] + block + body[body.index(END) + len(END):]
    else:
        body = body.rstrip() + "\n\n## The paper's table, reproduced (`python bench/reproduce.py`)\n\n" + block + "\n"
    path.write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--recipes", type=Path, default=RECIPES,
                        help="folder of the <method>_<dataset>.yaml recipes (default: the shipped ones)")
    parser.add_argument("--allow-slow-cpu", action="store_true", help="also run JULE on coil100/mnist_full on CPU")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--table-only", action="store_true", help="do not run anything; rewrite the table")
    args = parser.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for name, allowed, given in (("--datasets", DATASETS, datasets), ("--methods", METHODS, methods)):
        bad = [g for g in given if g not in allowed]
        if bad:
            parser.error(f"{name}: unknown {', '.join(bad)}; expected some of {', '.join(allowed)}")
    if not args.table_only:
        for dataset in datasets:
            for method in methods:
                why = cell_status(method, dataset, args.data_dir, args.device, args.allow_slow_cpu)
                if why:
                    print(f"{method}_{dataset}: skipped ({why})", flush=True)
                    continue
                run_cell(method, dataset, args.seeds, args.out, args.device, args.recipes, args.data_dir)
    text = table(args.out, args.device, args.data_dir, args.allow_slow_cpu, previous_rows(args.results))
    stamp = dt.date.today().isoformat()
    text = (f"Generated by `python bench/reproduce.py` on {stamp} from the runs in `runs/reproduce/`. "
            "Stability = mean NMI between the final assignments of every pair of seeds (1.000: every seed "
            "gives the same clustering). Seconds are each run's own `seconds` (data loading excluded). "
            "Made with = the julekit version @ git commit of the cell's runs; \"(kept)\": the row is quoted from the "
            "previous table, its runs are not in `runs/reproduce/` on the machine that wrote this one.\n\n" + text)
    write_results(text, args.results)
    print(text)


if __name__ == "__main__":
    main()
