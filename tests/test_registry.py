"""One name means one plugin: two distributions registering the same kind and name."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pluggy
import pytest
import yaml

from jule_kit import hookimpl, hookspecs
from jule_kit.errors import PluginError, RecipeError
from jule_kit.registry import Registry
from test_cli import _julekit, install_plugin_module

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
EXAMPLE = REPO / "tests" / "plugin_example" / "julekit_single_link" / "__init__.py"
DUP = "julekit-dup-gdl"


def _linkage(name: str) -> type:
    return type(f"Linkage_{name}", (), {"kind": "linkage", "name": name, "summary": name, "init": lambda self, g, l: None})


def _registry(**dists: list[type]) -> Registry:
    """A registry of hand-registered plugins, one per "distribution" (pluggy's plugin name stands for it)."""
    pm = pluggy.PluginManager("julekit")
    pm.add_hookspecs(hookspecs)
    for dist, classes in dists.items():
        module = types.SimpleNamespace(julekit_register_plugins=hookimpl(
            lambda register, _c=classes: [register(c) for c in _c]))
        pm.register(module, name=dist)
    return Registry(pm)


def test_bare_name_of_two_distributions_is_refused_and_dist_name_chooses():
    gdl, other = _linkage("gdl"), _linkage("gdl")
    registry = _registry(julekit=[gdl], **{"julekit-single-link": [other]})
    assert sorted(p.distribution for p in registry.all("linkage")) == ["julekit", "julekit-single-link"]
    assert registry.names("linkage") == ["gdl"]
    with pytest.raises(PluginError) as refused:
        registry.get("linkage", "gdl", where="r.yaml: linkage")
    assert str(refused.value) == (
        "r.yaml: linkage: linkage plugin 'gdl' is registered by two distributions, 'julekit' and "
        "'julekit-single-link'; choose one in the recipe as linkage: julekit:gdl or linkage: julekit-single-link:gdl, "
        "or leave 'julekit-single-link' out of JULEKIT_LOAD_PLUGINS (the distributions to load besides julekit)")
    assert registry.get("linkage", "julekit:gdl").cls is gdl
    assert registry.get("linkage", "Julekit_Single_Link:gdl").cls is other  # as pip compares names
    with pytest.raises(RecipeError, match="distribution 'elsewhere' registers no linkage plugin 'gdl'"):
        registry.get("linkage", "elsewhere:gdl")


def test_one_distribution_registering_a_name_twice_is_an_error():
    a, b = _linkage("gdl"), _linkage("gdl")
    with pytest.raises(PluginError, match="distribution 'julekit' registers two linkage plugins named 'gdl'"):
        _registry(julekit=[a, b])
    assert len(_registry(julekit=[a, a]).all()) == 1  # the same class twice replaces nothing


def _install_duplicate(tmp_path: Path) -> Path:
    """A distribution registering ``linkage: gdl`` (the example's single linkage under that name),
    leaving a mark in $DUP_GDL_MARK whenever it runs."""
    source = EXAMPLE.read_text()
    source = source.replace('name = "single_link"', 'name = "gdl"')
    run = "    def init(self, graph, labels):\n"
    assert source.count(run) == 1
    source = source.replace(run, run + '        open(__import__("os").environ["DUP_GDL_MARK"], "a").write("ran\\n")\n')
    return install_plugin_module(tmp_path, DUP, "julekit_dup_gdl", source)


def test_a_second_gdl_is_an_error_unless_chosen(tmp_path, usps_subset):
    site = _install_duplicate(tmp_path)
    mark = tmp_path / "mark"
    env = {"DUP_GDL_MARK": str(mark), "COLUMNS": "250"}
    listed = _julekit(["plugins", "--json", "--kind", "linkage"], site, **env)
    assert listed.returncode == 0, listed.stderr
    assert sorted((r["name"], r["distribution"]) for r in json.loads(listed.stdout) if r["name"] == "gdl") == [
        ("gdl", "julekit"), ("gdl", DUP)]
    table = _julekit(["plugins", "--kind", "linkage"], site, **env)
    assert f"registered by several distributions: linkage gdl (julekit, {DUP})" in table.stdout

    args = ["run", str(RECIPES / "ac_gdl_usps.yaml"), "--set", f"data={usps_subset}", "--quiet"]
    refused = _julekit([*args, "--out", str(tmp_path / "refused")], site, **env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    for part in ("linkage plugin 'gdl'", f"'julekit' and '{DUP}'", "linkage: julekit:gdl", f"linkage: {DUP}:gdl"):
        assert part in refused.stderr, (part, refused.stderr)
    assert not (tmp_path / "refused").exists()

    # the allow-list leaves the second distribution out: julekit's gdl runs
    builtin = _julekit([*args, "--out", str(tmp_path / "builtin")], site, JULEKIT_LOAD_PLUGINS="", **env)
    assert builtin.returncode == 0, builtin.stderr
    assert not mark.exists()

    # a recipe naming distribution:name runs the chosen one, and its runs record the choice
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(yaml.safe_dump({"extends": str(RECIPES / "ac_gdl_usps.yaml"), "linkage": {"name": f"{DUP}:gdl"}}))
    chosen = _julekit(["run", str(recipe), "--set", f"data={usps_subset}", "--quiet", "--out", str(tmp_path / "dup")],
                      site, **env)
    assert chosen.returncode == 0, chosen.stderr
    assert mark.read_text().startswith("ran")
    assert json.loads((tmp_path / "dup" / "summary.json").read_text())["recipe"]["linkage"] == {"name": f"{DUP}:gdl"}

    # the shorthand form picks julekit's, with its settings
    shorthand = _julekit(["validate", str(RECIPES / "ac_gdl_usps.yaml"), "--set", "linkage=julekit:gdl"], site, **env)
    assert shorthand.returncode == 0, shorthand.stderr
    assert yaml.safe_load(shorthand.stdout)["linkage"] == {"name": "julekit:gdl", "update": "exact", "size_norm": "source",
                                                           "compiled": True}
