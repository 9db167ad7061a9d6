"""Where julekit finds the recipes it ships."""
from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def shipped_recipes() -> list[Path]:
    """The shipped recipes, base recipes (names starting with ``_``) excluded."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p for p in RECIPES_DIR.glob("*.yaml") if not p.name.startswith("_"))


def find_recipe(spec: str) -> Path:
    """A recipe path as given, or a shipped recipe by name (``jule_usps``)."""
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = RECIPES_DIR / f"{spec}.yaml"
    return shipped if shipped.exists() else path
