"""A run on disk: atomic writes, the run directory layout, checkpoints."""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from PIL import Image

from . import __version__
from .errors import JulekitError
from .montage import make_montage, png_bytes
from .recipe import dump

RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ASSIGNMENTS = "assignments.csv"
CHECKPOINT = "checkpoint.pt"
MONTAGE = "montage.png"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The short commit of the git checkout julekit runs from; None when it is not one (a wheel)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # installed: a repository around site-packages is not ours
        return None
    try:
        found = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs: the record goes without
        return None
    if found.returncode != 0:
        return None
    return found.stdout.strip() or None


def versions() -> dict[str, str]:
    """What a run was made with, for its summary: julekit, torch, Python and the git commit if known."""
    made_with = {"julekit": __version__, "torch": torch.__version__, "python": platform.python_version(),
                 "threads": str(torch.get_num_threads())}  # deterministic runs repeat at a given thread count
    commit = git_commit()
    if commit:
        made_with["commit"] = commit
    return made_with


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


class RunDir:
    """The folder of one run: recipe, metrics, summary, assignments, checkpoint, tb/."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, force: bool = False) -> "RunDir":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise JulekitError(f"{path}: exists and is not a directory; choose another --out")
        if path.exists() and any(path.iterdir()) and not force:
            raise JulekitError(
                f"{path}: run directory exists and is not empty; use --resume {path} to continue it, "
                "--force to overwrite it, or another --out"
            )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_recipe(self, recipe: dict) -> None:
        atomic_write_text(self.file(RECIPE), dump(recipe))

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(to_jsonable(data), indent=2) + "\n")

    def write_montage(self, images: np.ndarray, labels: np.ndarray, truth: np.ndarray | None) -> Image.Image:
        """montage.png: a row of thumbnails per cluster; returns the picture (for TensorBoard)."""
        montage = make_montage(images, labels, truth)
        atomic_write_bytes(self.file(MONTAGE), png_bytes(montage))
        return montage

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write_text(self.file(METRICS), "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))

    def read_metrics(self) -> list[dict]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_assignments(self, labels: np.ndarray, paths: list[str] | None, truth: np.ndarray | None) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["path" if paths is not None else "index", "cluster"] + (["label"] if truth is not None else [])
        writer.writerow(header)
        keys: Iterable = paths if paths is not None else range(len(labels))
        for i, key in enumerate(keys):
            writer.writerow([key, int(labels[i])] + ([int(truth[i])] if truth is not None else []))
        atomic_write_text(self.file(ASSIGNMENTS), buf.getvalue())

    def read_assignments(self) -> np.ndarray:
        """The final cluster of every sample, in sample order (from assignments.csv)."""
        path = self.file(ASSIGNMENTS)
        try:
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
            return np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise JulekitError(f"{path}: cannot read the assignments ({exc})") from None

    def save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.file(CHECKPOINT), buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        path = self.file(CHECKPOINT)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise JulekitError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
