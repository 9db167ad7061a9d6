"""Installing beside other packages: only `jule_kit` at the top level, recipes shipped in the wheel.

The repository keeps ``plugins/<kind>/<name>.py`` at its top, but they install as
``jule_kit.plugins``; a foreign top-level ``plugins`` package must change nothing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

from jule_kit.cli import app

REPO = Path(__file__).resolve().parent.parent
# what a wheel is built from here; tests/ and bench/ come along to show they stay out of it
SOURCES = ("pyproject.toml", "README.md", "jule_kit", "plugins", "recipes", "tests", "bench")
JUNK = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", "out", "results")
DIST_INFO = f"julekit-{distribution('julekit').version}.dist-info"
QUICK = ["--set", "train.epochs=1", "--set", "train.max_periods=1", "--device", "cpu", "--quiet"]


def _build_wheel(src: Path, out: Path) -> Path:
    # --no-build-isolation: the build uses the installed setuptools, so it works offline
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out)], check=True, capture_output=True, text=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def _top_levels(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name.split("/", 1)[0] for name in zf.namelist()}


def _dist_file(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [m for m in zf.namelist() if m.endswith(f".dist-info/{name}")]
        return zf.read(member).decode()


def _julekit(args: list[str], cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    env.pop("JULEKIT_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "jule_kit.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a clean copy: an in-tree build/ folder can hold stale files from older layouts
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=JUNK)
        else:
            shutil.copy2(REPO / name, src / name)
    return _build_wheel(src, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """A folder holding someone else's top-level ``plugins`` package, which must never be imported."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("raise ImportError('foreign plugins package imported')\n")
    return root


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (first on PYTHONPATH, it shadows the editable install)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, text=True)
    return site


def builtin_plugins() -> set[tuple[str, str]]:
    """(kind, name) of everything julekit's own ``julekit`` entry points register."""
    found: set[tuple[str, str]] = set()
    for ep in distribution("julekit").entry_points.select(group="julekit"):
        ep.load().julekit_register_plugins(register=lambda cls: found.add((cls.kind, cls.name)))
    return found


def listed(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    assert result.returncode == 0, result.stderr
    return {(r["kind"], r["name"]) for r in json.loads(result.stdout) if r["distribution"] == "julekit"}


# -- the wheel --------------------------------------------------------------------------------


def test_wheel_installs_only_jule_kit_at_the_top_level(wheel):
    assert _top_levels(wheel) == {"jule_kit", DIST_INFO}
    assert _dist_file(wheel, "top_level.txt").split() == ["jule_kit"]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # every built-in plugin and recipe of the checkout is in it (pyproject lists the packages by hand)
    for path in (REPO / "plugins").rglob("*.py"):
        assert f"jule_kit/plugins/{path.relative_to(REPO / 'plugins').as_posix()}" in names, path
    for path in (REPO / "recipes").glob("*.yaml"):
        assert f"jule_kit/recipes/{path.name}" in names, path


def test_wheel_entry_points_name_modules_inside_jule_kit(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    values = re.findall(r"^\w+ = (\S+)$", _dist_file(wheel, "entry_points.txt"), flags=re.M)
    modules = [v for v in values if ":" not in v]  # the julekit group; the console script is module:function
    assert len(modules) >= 12
    for module in modules:
        assert module.startswith("jule_kit.plugins."), module
        assert module.replace(".", "/") + ".py" in names, module


def test_installed_distribution_points_into_jule_kit():
    eps = distribution("julekit").entry_points.select(group="julekit")
    assert eps and all(ep.value.startswith("jule_kit.plugins.") for ep in eps)


# -- a foreign `plugins` package ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["empty folder", "repository root"])
def test_builtins_are_listed_beside_a_foreign_plugins_package(where, foreign, tmp_path):
    # at the repository root ./plugins/ is first on sys.path: its __init__ refuses a top-level import
    cwd = REPO if where == "repository root" else tmp_path
    assert listed(_julekit(["plugins", "--json"], cwd, [foreign])) == builtin_plugins()


def test_recipe_runs_beside_a_foreign_plugins_package(foreign, tmp_path):
    out = tmp_path / "run"
    ran = _julekit(["run", str(REPO / "recipes" / "quickstart_digits.yaml"), "--out", str(out), *QUICK], tmp_path,
                   [foreign])
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["n_samples"] == 1797


def test_the_plugin_folder_refuses_a_top_level_import():
    result = subprocess.run([sys.executable, "-c", "import plugins"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "import jule_kit.plugins" in result.stderr


# -- the installed wheel ------------------------------------------------------------------------


def test_installed_wheel_runs_a_shipped_recipe_from_an_empty_folder(installed, foreign, tmp_path):
    assert {p.name for p in installed.iterdir()} - {"bin"} == {"jule_kit", DIST_INFO}
    path = [foreign, installed]
    probe = "import jule_kit.paths as p; print(p.__file__); print(p.RECIPES_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))})
    module, recipes = where.stdout.split()
    assert Path(module).is_relative_to(installed), where  # the wheel's copy, not the checkout
    assert Path(recipes) == installed / "jule_kit" / "recipes"

    shown = _julekit(["recipes"], tmp_path, path)
    assert shown.returncode == 0, shown.stderr
    assert "quickstart_digits" in shown.stdout
    assert str(installed / "jule_kit" / "recipes") in "".join(shown.stdout.split())  # says where, maybe folded
    assert listed(_julekit(["plugins", "--json"], tmp_path, path)) == builtin_plugins()

    ran = _julekit(["run", "quickstart_digits", "--out", "run", *QUICK], tmp_path, path)  # extends: _jule.yaml
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["recipe"]["linkage"]["name"] == "gdl"


# -- the example third-party plugin and the README ---------------------------------------------


def test_plugin_example_has_its_own_top_level_name(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "tests" / "plugin_example", src, ignore=JUNK)
    wheel = _build_wheel(src, tmp_path / "dist")
    tops = _top_levels(wheel) - {n for n in _top_levels(wheel) if n.endswith(".dist-info")}
    assert tops == {"julekit_single_link"}
    assert "single_link = julekit_single_link" in _dist_file(wheel, "entry_points.txt")


def test_readme_plugin_example_uses_a_unique_package_name():
    text = (REPO / "README.md").read_text()
    section = text.split("### Writing a plugin", 1)[1].split("\n## ", 1)[0]
    (package,) = re.findall(r"^# (\w+)/__init__\.py$", section, flags=re.M)
    (module,) = re.findall(r'^\w+ = "([\w.]+)"$', section, flags=re.M)
    assert module.split(".")[0] == package
    assert package not in {"plugins", "plugin", "tests", "src"} and package.startswith("julekit_")


# -- version and recipe lookup ---------------------------------------------------------------------


def test_version_prints_julekit_and_torch(runner):
    import torch

    import jule_kit

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert f"julekit {jule_kit.__version__}" in result.output and f"torch {torch.__version__}" in result.output
    assert jule_kit.__version__ == distribution("julekit").version


def test_a_copied_recipe_still_extends_the_shipped_base(runner, tmp_path):
    copy = tmp_path / "mine.yaml"
    copy.write_text((REPO / "recipes" / "quickstart_digits.yaml").read_text())  # extends: _jule.yaml
    result = runner.invoke(app, ["validate", str(copy)])
    assert result.exit_code == 0, result.output
    assert "gdl" in result.output


def test_readme_recipe_path_outside_a_checkout_names_the_shipped_recipe(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "recipes/quickstart_digits.yaml"])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1, text
    assert "julekit run quickstart_digits" in text
