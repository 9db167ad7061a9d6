"""Where julekit finds the recipes it ships.

An installed wheel holds them as package data in ``jule_kit/recipes/`` (pyproject.toml maps the
repository's ``recipes/`` folder there); a source checkout, installed editable or not, keeps them
in ``recipes/`` beside ``jule_kit/``.
"""
from __future__ import annotations

from pathlib import Path

from .errors import RecipeError

_PACKAGE = Path(__file__).resolve().parent
_MARKER = "_jule.yaml"  # the base every jule_* recipe extends: tells our folder from any other `recipes`


def recipes_dir() -> Path | None:
    """The folder of shipped recipes: the installed package data, else the source checkout's."""
    # package data first: beside an installed jule_kit, ../recipes is site-packages/recipes,
    # which belongs to nobody in particular
    for candidate in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if (candidate / _MARKER).is_file():
            return candidate
    return None


RECIPES_DIR = recipes_dir()


def shipped_recipes() -> list[Path]:
    """The shipped recipes, base recipes (names starting with ``_``) excluded."""
    if RECIPES_DIR is None:
        return []
    return sorted(p for p in RECIPES_DIR.glob("*.yaml") if not p.name.startswith("_"))


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe (or base recipe, ``_jule``) called ``name``, if there is one."""
    if RECIPES_DIR is None or not name or Path(name).name != name:
        return None
    path = RECIPES_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return path if path.is_file() else None


def find_recipe(spec: str) -> Path:
    """A recipe path as given, or a shipped recipe by name (``jule_usps``)."""
    path = Path(spec)
    if path.exists():
        return path
    if path.suffix in (".yaml", ".yml"):
        shipped = shipped_recipe(path.stem)
        if shipped is not None and path.parent.name == "recipes":
            # e.g. `julekit run recipes/jule_usps.yaml` outside a checkout, where the README's
            # relative path does not exist but the recipe is shipped
            raise RecipeError(f"{spec}: recipe not found; the shipped recipe of that name runs from anywhere "
                              f"as `julekit run {path.stem}` (shipped recipes: {RECIPES_DIR})")
        return path
    return shipped_recipe(spec) or path
