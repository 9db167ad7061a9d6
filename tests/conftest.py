"""Shared fixtures: the real datasets and a CLI runner."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"


def real_data_dir() -> Path:
    """Where the benchmark datasets live: $JULEKIT_DATA, else ../shared/datasets."""
    env = os.environ.get("JULEKIT_DATA")
    return Path(env) if env else SHARED


@pytest.fixture
def data_dir() -> Path:
    path = real_data_dir()
    if not (path / "usps.npz").exists():
        pytest.fail(f"benchmark datasets not found in {path}: set JULEKIT_DATA to the folder holding usps.npz")
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def usps_subset(data_dir: Path, tmp_path: Path) -> Path:
    """A 600-image real USPS subset written as its own .npz."""
    d = np.load(data_dir / "usps.npz")
    idx = np.sort(np.random.default_rng(0).permutation(len(d["labels"]))[:600])
    path = tmp_path / "usps600.npz"
    np.savez(path, images=d["images"][idx], labels=d["labels"][idx])
    return path


@pytest.fixture(params=["default", "2"], ids=["default-threads", "2-threads"])
def threads(request):
    """Reruns must agree bit for bit with the machine's default torch threads and with an explicit 2."""
    import torch

    before = torch.get_num_threads()
    if request.param != "default":
        torch.set_num_threads(int(request.param))
    yield request.param
    torch.set_num_threads(before)


def thread_env(threads: str) -> dict[str, str]:
    """The environment of a child process with the default threads, or OMP_NUM_THREADS=threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    return env
