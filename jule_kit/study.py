"""One study layer: run a recipe into a folder, or reuse or resume what the folder holds.

Multi-seed runs (``seeds.py``), ablations (``ablate.py``) and ``bench/reproduce.py`` all come
through :func:`run_or_reuse`, so "may this folder be reused?" has one answer:

- a stored run is reused only when it finished and its saved resolved recipe (``summary.json``
  "recipe", else ``recipe.yaml``) equals the one asked for now (``description`` and ``device``
  aside: they do not change what a run computes). The stored recipe is resolved again first, so a
  setting added to julekit after the run was made takes its default there too: a new setting's
  default keeps the behaviour from before it existed, while a changed default shows, since a
  stored recipe holds every value it ran with;
- an interrupted run of the same recipe is resumed from its checkpoint;
- a folder holding other settings raises :class:`StaleRunError`, one line naming the folder and
  the first differing key (dotted path) with both values. What happens then is the caller's
  policy: the CLI stops with nothing overwritten, ``bench/reproduce.py`` sets the folder aside
  (:func:`set_aside`) and runs the cell again.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import distributed
from .errors import JulekitError
from .rundir import RECIPE, SUMMARY, RunDir

IGNORED_KEYS = ("description", "device")  # differences that do not make a stored run stale
EMPTY, INTERRUPTED, FINISHED = "empty", "interrupted", "finished"  # what a folder holds
REUSED, RESUMED, RAN = "reused", "resumed", "ran"  # what run_or_reuse did
_ABSENT = object()


def _show(value: Any) -> str:
    # JSON spelling reads like the recipe's YAML: null, true, "gdl", [28, 28]
    return "absent" if value is _ABSENT else json.dumps(value, default=str)


class StaleRunError(JulekitError):
    """A folder holds a run of other settings than the ones asked for."""

    def __init__(self, folder: Path, key: str, stored: Any, wanted: Any, hint: str = "") -> None:
        self.folder, self.key, self.stored, self.wanted = Path(folder), key, stored, wanted
        super().__init__(f"{folder}: holds a run of other settings ({key}: {_show(stored)} there, {_show(wanted)} now)"
                         + (f"; {hint}" if hint else ""))


def first_difference(stored: Any, wanted: Any, ignore: tuple[str, ...] = IGNORED_KEYS,
                     path: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted path) where two recipes differ, with both values; None when they agree.

    ``ignore`` names top-level keys left out of the comparison."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in [*wanted, *(k for k in stored if k not in wanted)]:  # the recipe's order first
            if not path and key in ignore:
                continue
            found = first_difference(stored.get(key, _ABSENT), wanted.get(key, _ABSENT), (),
                                     f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    # a tuple in memory is a list once saved as YAML or JSON
    same = (list(stored) if isinstance(stored, tuple) else stored) == (list(wanted) if isinstance(wanted, tuple) else wanted)
    return None if same else (path, stored, wanted)


def _read_summary(folder: Path) -> dict | None:
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return None  # none yet, or damaged: not a finished run
    return summary if isinstance(summary, dict) else None


def _read_recipe(folder: Path) -> dict | None:
    from .recipe import read_yaml

    if not (folder / RECIPE).exists():
        return None
    try:
        return read_yaml(folder / RECIPE)
    except JulekitError:
        return None  # damaged: nothing there can be resumed


@dataclass
class Stored:
    """What a run folder holds for a recipe: EMPTY, INTERRUPTED or FINISHED (with its summary)."""

    state: str
    summary: dict | None = None


def resolved_now(stored: dict) -> dict:
    """A stored resolved recipe with the settings added since it was saved at their defaults.

    One that no longer validates (a plugin or key that is gone) is returned as it is: the
    comparison then shows the difference."""
    from .recipe import validate

    try:
        return validate(copy.deepcopy(stored), source="stored recipe")
    except JulekitError:
        return stored


def look(folder: Path, recipe: dict, *, hint: str = "", complete: Callable[[dict], bool] | None = None) -> Stored:
    """What ``folder`` holds for ``recipe``; raise StaleRunError when it holds other settings.

    ``complete(summary)`` may ask more of a finished run (bench/reproduce.py: enough seeds);
    a run it turns down counts as interrupted."""
    folder = Path(folder)
    summary = _read_summary(folder)
    stored = summary.get("recipe") if summary is not None else None
    resumable = _read_recipe(folder)
    if not isinstance(stored, dict):
        stored, summary = resumable, None  # a summary without its recipe cannot be vouched for
    if stored is None:
        return Stored(EMPTY)
    difference = first_difference(resolved_now(stored), recipe)
    if difference is not None:
        raise StaleRunError(folder, *difference, hint=hint)
    if summary is not None and (complete is None or complete(summary)):
        return Stored(FINISHED, summary)
    return Stored(INTERRUPTED) if resumable is not None else Stored(EMPTY)


@dataclass
class Outcome:
    summary: dict
    run_dir: RunDir
    status: str  # REUSED, RESUMED or RAN


def run_or_reuse(run: Callable[[RunDir, bool], dict], folder: Path, recipe: dict, *, force: bool = False,
                 hint: str = "", complete: Callable[[dict], bool] | None = None) -> Outcome:
    """Reuse the finished run of ``recipe`` in ``folder``, resume an interrupted one, or run it.

    ``run(run_dir, resume)`` runs (or resumes) into ``run_dir`` and returns the run's summary.
    ``force`` runs afresh whatever the folder holds. Raises StaleRunError (``hint`` appended to
    its message) when the folder holds a run of other settings; nothing is written then."""
    folder = Path(folder)
    stored = Stored(EMPTY) if force else look(folder, recipe, hint=hint, complete=complete)
    if stored.state == FINISHED:
        return Outcome(stored.summary, RunDir(folder), REUSED)
    if stored.state == INTERRUPTED:
        run_dir = RunDir(folder)
        return Outcome(run(run_dir, True), run_dir, RESUMED)
    # nothing usable is there; torchrun: rank 0 creates the folder, the others read
    run_dir = distributed.current().create_run_dir(folder, force=True)
    return Outcome(run(run_dir, False), run_dir, RAN)


def set_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``<folder>.stale-<time>`` (kept, not deleted) and return the new path."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = folder.with_name(f"{folder.name}.stale-{stamp}"), 1
    while aside.exists():  # set aside twice within a second
        aside, n = folder.with_name(f"{folder.name}.stale-{stamp}-{n}"), n + 1
    folder.rename(aside)
    return aside
