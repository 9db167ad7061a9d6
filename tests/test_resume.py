"""A run killed mid-way and resumed ends exactly where an uninterrupted run does; Ctrl-C exits cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import thread_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
ENV = thread_env("default")  # the machine's default threads, as a user runs it
POLL = 0.05  # seconds between looks at the checkpoint; the period after it takes over a second


def start(*args: str, env: dict[str, str] = ENV, command: str = "run") -> subprocess.Popen:
    # Ctrl-C as a terminal delivers it: a suite started in the background (`pytest &`, nohup) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt in the child
    return subprocess.Popen([sys.executable, "-m", "jule_kit.cli", command, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_args(data: Path, out: Path, quiet: bool = True) -> list[str]:
    # eta 0.5 halves the clusters per period (120 -> 60 -> 30 -> 15 -> 10 on 300 images), so the
    # checkpoint of period 1 is not the last one; 10 epochs make each period long enough to stop in
    return ["recipes/jule_usps.yaml", "--set", f"data={data}", "--set", "data.subset=300", "--set", "train.epochs=10",
            "--set", "clusterer.eta=0.5", "--device", "cpu", "--out", str(out)] + (["--quiet"] if quiet else [])


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, min_period: int, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended (rc {proc.returncode}) before a checkpoint of period {min_period}; "
                                 f"make its periods longer (subset size or epochs)\n{out}\n{err}")
        if path.exists():
            state = torch.load(path, weights_only=False)  # written atomically: never half a file
            if state["period"] >= min_period:
                return state
        time.sleep(POLL)
    proc.kill()
    raise AssertionError(f"no checkpoint of period {min_period} after {timeout} s")


@pytest.mark.parametrize("threads", ["default", "2"], ids=["default-threads", "2-threads"])
def test_killed_run_resumes_to_the_same_result(usps_subset, tmp_path, threads):
    env = thread_env(threads)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(*run_args(usps_subset, whole), env=env)  # alongside: both share the cores
    proc = start(*run_args(usps_subset, killed), env=env)
    state = wait_for_checkpoint(proc, killed / "checkpoint.pt", min_period=1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run finished before the kill; make its periods longer"

    resumed = subprocess.run([sys.executable, "-m", "jule_kit.cli", "run", "--resume", str(killed), "--quiet"],
                             cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err

    assert (killed / "assignments.csv").read_text() == (whole / "assignments.csv").read_text()
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    periods = [r["period"] for r in rows]
    assert periods == list(range(len(periods) - 1)) + ["final"]  # one row per period, none twice
    assert len(periods) - 1 > state["period"] + 1  # periods were left to do after the kill
    reference_rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [(r["period"], r["clusters"], r.get("nmi")) for r in rows] == \
        [(r["period"], r["clusters"], r.get("nmi")) for r in reference_rows]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["n_clusters"] == 10 and summary["periods"] == len(periods) - 1

    # TensorBoard: the killed process's periods (flushed before each checkpoint) plus the resumed ones, once each
    events = EventAccumulator(str(killed / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    nmi = events.Scalars("metrics/nmi")
    assert [e.step for e in nmi] == list(range(len(rows)))  # the final stage is the last step
    assert [e.value for e in nmi] == pytest.approx([r["nmi"] for r in rows], rel=1e-6)


def test_ctrl_c_exits_130_with_a_resume_hint(usps_subset, tmp_path):
    out = tmp_path / "run"
    proc = start(*run_args(usps_subset, out, quiet=False))  # the interactive path, progress bars included
    wait_for_checkpoint(proc, out / "checkpoint.pt", min_period=0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert f"julekit run --resume {out}" in stderr
    assert "Traceback" not in stderr + stdout
    assert not (out / "summary.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["period"] >= 0 and "model" in state and "optimizer" in state


def kill_when_checkpointed(proc: subprocess.Popen, checkpoint: Path, min_period: int = 1) -> None:
    wait_for_checkpoint(proc, checkpoint, min_period=min_period)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_seeds_run_killed_in_its_second_seed_resumes_to_the_same_result(usps_subset, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(*run_args(usps_subset, whole), "--seeds", "2")
    proc = start(*run_args(usps_subset, killed), "--seeds", "2")
    kill_when_checkpointed(proc, killed / "seed1" / "checkpoint.pt")
    assert (killed / "seed0" / "summary.json").exists() and not (killed / "seed1" / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "jule_kit.cli", "run", "--resume", str(killed)],
                             cwd=REPO, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "reused" in resumed.stdout.split("seed 0: ")[1].splitlines()[0]  # the finished seed is not redone
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    for k in (0, 1):
        assert (killed / f"seed{k}" / "assignments.csv").read_bytes() == \
            (whole / f"seed{k}" / "assignments.csv").read_bytes()
    got, want = (json.loads((d / "summary.json").read_text()) for d in (killed, whole))
    assert [r["assignments_sha256"] for r in got["runs"]] == [r["assignments_sha256"] for r in want["runs"]]


def test_ablation_interrupted_mid_variant_resumes_to_the_same_result(usps_subset, tmp_path):
    def ablate_args(out: Path) -> list[str]:
        words = ["--recipe", "recipes/jule_usps.yaml", "--linkage", "average", "--out", str(out)]
        for item in run_args(usps_subset, out)[1:]:
            if "=" in item:  # the --set values of run_args, applied to every variant
                words += ["--set", item]
        return words + ["--set", "device=cpu"]

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(*ablate_args(whole), command="ablate")
    proc = start(*ablate_args(killed), command="ablate")
    variant = Path("jule_usps") / "linkage=average" / "seed0"
    kill_when_checkpointed(proc, killed / variant / "checkpoint.pt")
    assert (killed / "jule_usps" / "baseline" / "seed0" / "summary.json").exists()
    assert not (killed / variant / "summary.json").exists()

    again = subprocess.run([sys.executable, "-m", "jule_kit.cli", "ablate", *ablate_args(killed)],
                           cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    for run in ("jule_usps/baseline/seed0", str(variant)):
        assert (killed / run / "assignments.csv").read_bytes() == (whole / run / "assignments.csv").read_bytes()
