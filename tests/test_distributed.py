"""The backward pass under torchrun: 2 CPU processes (gloo) train as one process does.

One ``torchrun --nproc_per_node=2`` launch of this file (``__main__`` below; one launch because
starting the ranks costs more than the runs) on a 300-image real USPS subset; each rank runs:

* the CLI as ``torchrun -m jule_kit.cli run`` runs it: JULE, weighted triplet loss. Rank 0's run
  directory must be what a single process writes for the same recipe and seed;
* an Experiment of DeepCluster (cross-entropy through a linear head) from scratch, and
* an Experiment resuming a single-process JULE run from its period-0 checkpoint: each rank saves
  its labels and weights, which must agree across the ranks and with a single process.
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# one thread per process, as torchrun sets it: two ranks share the 2 cores, and the single-process
# reference computes its float sums the same way
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["data=usps", "data.subset=300", "device=cpu"]
# eta 0.5: 57 -> 28 -> 14 clusters, so three periods train (two epochs each) before the final stage
JULE = ["clusterer.eta=0.5", "train.epochs=2", "train.max_periods=3"]
# batch 64 over 300 samples: a short last batch; 2 periods of k-means with k = 50, one epoch each
DEEPCLUSTER = ["train.max_periods=2", "train.batch_size=64"]
WEIGHT_ATOL = 1e-4  # rank vs one process: the gradient sums run in another order
RANK_ATOL = 1e-6  # rank vs rank: DDP all-reduces the same gradients everywhere


def recipe(case: str, overrides: list[str] | None = None) -> dict:
    from jule_kit.recipe import load_recipe

    path = "recipes/deepcluster_usps.yaml" if case == "deepcluster" else "recipes/jule_usps.yaml"
    return load_recipe(REPO / path, SMALL + (DEEPCLUSTER if case == "deepcluster" else JULE) + (overrides or []))


def run_experiment(rec: dict, out: Path, data_dir: str, resume: bool = False):
    from jule_kit import distributed
    from jule_kit.engine import Experiment
    from jule_kit.rundir import RunDir

    # create_run_dir: RunDir.create in one process; under torchrun rank 0 creates, the others only read
    run_dir = RunDir(out) if resume else distributed.current().create_run_dir(out)
    return Experiment(rec, run_dir, data_dir=data_dir, recipe_name=out.name).run(resume=resume)


def single_process(rec: dict, out: Path, data_dir: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment(rec, out, data_dir)
    finally:
        torch.set_num_threads(threads)


def assert_weights_close(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key].float(), want[key].float(), atol=atol, rtol=0, msg=key)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """Single-process references, then the one torchrun launch; returns (folder, references, process)."""
    from conftest import real_data_dir

    data_dir = real_data_dir()
    if not (data_dir / "usps.npz").exists():
        pytest.fail(f"benchmark datasets not found in {data_dir}: set JULEKIT_DATA to the folder holding usps.npz")
    tmp = tmp_path_factory.mktemp("ddp")
    # a single-process JULE run stopped after period 0, for the ranks to resume
    single_process(recipe("resumed", ["train.max_periods=1"]), tmp / "resumed", str(data_dir))
    # --standalone: a free port, so tests running side by side do not meet
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(tmp), str(data_dir)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    references = {"jule": single_process(recipe("jule"), tmp / "one" / "jule", str(data_dir)),
                  "deepcluster": single_process(recipe("deepcluster"), tmp / "one" / "deepcluster", str(data_dir))}
    return tmp, references, proc


def saved(tmp: Path, case: str) -> list[dict]:
    return [torch.load(tmp / f"{case}-rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("case", ["deepcluster", "resumed"])
def test_ranks_agree_with_each_other_and_one_process(launched, case):
    tmp, references, _ = launched
    single = references["deepcluster" if case == "deepcluster" else "jule"]  # resumed: = the whole JULE run
    rank0, rank1 = saved(tmp, case)
    assert (rank0["labels"] == rank1["labels"]).all()
    assert_weights_close(rank1["model"], rank0["model"], RANK_ATOL)
    assert (rank0["labels"] == single.labels).all()
    assert_weights_close(rank0["model"], single.model.state_dict(), WEIGHT_ATOL)
    got = rows(tmp / case / "metrics.jsonl")  # written by rank 0
    assert [(r["period"], r["clusters"], r["nmi"]) for r in got] == \
        [(r["period"], r["clusters"], r["nmi"]) for r in single.metrics]
    assert [r.get("loss") for r in got] == pytest.approx([r.get("loss") for r in single.metrics], abs=1e-5)


def test_cli_run_writes_what_one_process_writes(launched):
    tmp, _, proc = launched
    out, one = tmp / "cli", tmp / "one" / "jule"
    assert f"-> {out}" in proc.stdout
    assert (out / "assignments.csv").read_text() == (one / "assignments.csv").read_text()
    state, want = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (out, one))
    assert state["period"] == want["period"] == 2 and state["step"] == want["step"]
    assert (state["labels"] == want["labels"]).all()
    assert_weights_close(state["model"], want["model"], WEIGHT_ATOL)
    # rank 0 alone wrote: the files of one process, one TensorBoard writer
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1


def worker(tmp: Path, data_dir: str) -> None:
    """One torchrun rank: the three cases; the last two save labels and weights to ``<case>-rank<r>.pt``."""
    sys.argv = ["jule_kit.cli", "run", "recipes/jule_usps.yaml", *[w for s in SMALL + JULE for w in ("--set", s)],
                "--data-dir", data_dir, "--quiet", "--out", str(tmp / "cli")]
    try:
        runpy.run_module("jule_kit.cli", run_name="__main__")  # what python -m jule_kit.cli does
    except SystemExit as exc:  # typer exits when the command is done
        if exc.code not in (0, None):
            raise
    results = {"deepcluster": run_experiment(recipe("deepcluster"), tmp / "deepcluster", data_dir),
               "resumed": run_experiment(recipe("resumed"), tmp / "resumed", data_dir, resume=True)}
    rank = os.environ["RANK"]
    for case, result in results.items():
        torch.save({"labels": result.labels, "model": result.model.state_dict()}, tmp / f"{case}-rank{rank}.pt")


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
