"""YAML recipes: load, inherit (``extends:``), override (``--set key.path=value``), validate.

A recipe names one plugin per kind under a top-level key named after the kind, either
as a bare name (``linkage: gdl``) or a mapping (``linkage: {name: gdl, update: fast}``).
The resolved recipe (every setting explicit) is what a run directory stores; it loads
and runs as is.
"""
from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import RecipeError
from .hookspecs import KINDS
from .paths import shipped_recipe
from .registry import Registry, Setting, _coerce, _type_name, get_registry


@dataclass
class TrainSettings:
    """The backward pass schedule (recipe key ``train``)."""

    epochs: int = 20  # per period
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9  # Torch7 optim.sgd dampens momentum by default
    weight_decay: float = 5e-5
    lr_policy: Literal["inv", "fixed"] = "inv"
    inv_gamma: float = 1e-4
    inv_power: float = 0.75
    max_periods: int = 100
    feature_mode: Literal["eval", "train"] = "eval"  # BN mode when extracting clustering features
    feature_batch_size: int = 1000
    final_bn: Literal["refresh", "keep"] = "refresh"  # batch-norm statistics for the final stage's features
    channels_last: bool | Literal["auto"] = "auto"  # the network's memory format (engine.uses_channels_last)


TRAIN_HELP = {
    "epochs": "training epochs per period (paper: 20)",
    "batch_size": "mini-batch size (paper: 100)",
    "lr": "initial learning rate (paper: 0.01)",
    "momentum": "SGD momentum (paper: 0.9)",
    "dampening": "SGD dampening (Torch7 optim default: equal to momentum; PyTorch default 0)",
    "weight_decay": "L2 weight decay (paper: 5e-5)",
    "lr_policy": "inv: lr * (1 + inv_gamma * t)^(-inv_power) over global iterations t; fixed",
    "inv_gamma": "gamma of the inv policy (paper: 1e-4)",
    "inv_power": "power of the inv policy (paper: 0.75)",
    "max_periods": "stop the joint loop after this many periods even above the target",
    "feature_mode": "batch-norm mode when extracting clustering features: eval or train (the Torch code)",
    "feature_batch_size": "batch size for feature extraction and the final batch-norm refresh (eval-mode features "
                          "on the CPU: at most 256 at a time, the same values, faster in cache)",
    "channels_last": "auto (default): channels-last memory format for inputs of 28x28 pixels and more (1.05-1.6x "
    "faster training on the CPU there), contiguous NCHW below (faster for 16x16; docs/PERFORMANCE.md sections 9-10); "
    "true / false: always / never channels-last. Either gives the same results within float rounding but other bits",
    "final_bn": "refresh: re-estimate batch-norm statistics of the final network on all images before the final "
    "stage (what the Torch code's last train-mode feature pass does); keep: the training-time running averages",
}


@dataclass
class DataSettings:
    """The dataset (recipe key ``data``): a name on the data path, a file, or a folder."""

    name: str = "digits"
    subset: int | None = None  # a deterministic random subset of this many samples
    subset_seed: int = 0  # picks the subset; apart from `seed` so that every seed clusters the same samples
    resize: list[int] | None = None  # [H, W]
    channels: int | None = None  # 1 or 3


DATA_HELP = {
    "name": "dataset name on the data path (usps, coil20, ...), digits (embedded), or a .npz/.h5 file or image folder",
    "subset": "use a deterministic random subset of this many samples",
    "subset_seed": "which random subset (independent of the run's seed, so seeds cluster the same samples)",
    "resize": "[H, W] to resize images to",
    "channels": "1 (grayscale) or 3 (RGB) to convert images to",
}

TOP_LEVEL = {
    "description": "one line shown by `julekit recipes`",
    "extends": "a base recipe (path relative to this file) whose keys this one overrides",
    "data": "the dataset: a name, a path, or a mapping with name/subset/resize/channels",
    "clusters": "target number of clusters (default: the dataset's number of classes)",
    "seed": "random seed",
    "device": "auto, cpu or cuda",
    "deterministic": "true: bit-for-bit repeatable runs for a seed on the CPU at a given thread count (PyTorch's "
    "deterministic kernels; on CUDA with deterministic cuBLAS/cuDNN); false: PyTorch's default kernels",
    "derive": "true: set the input size, channels, CNN depth, eta and clusters from the data by the paper's "
    "per-dataset rules (jule_kit/auto_recipe.py; the `jule` recipe); the resolved recipe holds the derived values "
    "and derive: false. --set keys win over the rules",
    "train": "the backward pass schedule",
    **{k: f"the {k} plugin: a name or a mapping with name and settings" for k in KINDS},
}
FLOAT32_MAX = 3.4028234663852886e38
OPTIONAL_KINDS = {"backbone", "loss"}  # null backbone = cluster raw pixels, no training


def _dataclass_settings(cls: type, helps: dict[str, str]) -> dict[str, Setting]:
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: Setting(f.name, hints[f.name], f.default, helps.get(f.name, "")) for f in fields(cls)}


TRAIN_SETTINGS = _dataclass_settings(TrainSettings, TRAIN_HELP)
DATA_SETTINGS = _dataclass_settings(DataSettings, DATA_HELP)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------


# PyYAML's constructors raise these (not YAMLError) for e.g. `2001-13-45` (a date), `!!int 0x`, deep nesting.
YAML_VALUE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system: as good as missing
        return False


def read_yaml(path: Path) -> dict:
    if not _exists(path):
        raise RecipeError(f"{path}: recipe not found")
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory; expected a recipe .yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({type(exc).__name__}: {exc})") from None
    except YAML_VALUE_ERRORS as exc:
        raise RecipeError(f"{path}: invalid YAML value ({type(exc).__name__}: {exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _as_plugin(value: Any, kind: str | None = None, registry: Registry | None = None) -> Any:
    """Normalise ``gdl`` to ``{"name": "gdl"}``; leave other values for validation.

    A ``name:value`` shorthand (``backbone: timm:resnet18``) becomes ``{"name": name, S: value}``
    where S is the plugin class's ``shorthand_setting`` (timm: ``model``), looked up in the registry.
    A name may start with its distribution (``linkage: julekit:gdl``, ``julekit:timm:resnet18``):
    that chooses between distributions registering the same name.
    """
    if isinstance(value, str):
        if ":" in value and kind is not None:
            return _expand_shorthand(kind, value, registry)
        return {"name": value}
    return value


def _expand_shorthand(kind: str, text: str, registry: Registry | None = None) -> dict:
    registry = registry or get_registry()
    name, _, arg = (part.strip() for part in text.partition(":"))
    if registry.is_distribution(name):  # "julekit:gdl": the distribution's plugin, maybe with its own shorthand
        plugin, sep, arg = (part.strip() for part in arg.partition(":"))
        name = f"{name}:{plugin}"
        if not sep:
            return {"name": name}
    info = registry.get(kind, name, where=kind)
    setting = getattr(info.cls, "shorthand_setting", None)
    if not setting or setting not in info.settings:
        raise RecipeError(
            f"{kind}: {text!r}: the {kind} plugin {name!r} has no name:value shorthand; "
            f"write a mapping instead, e.g. {{name: {name}, <setting>: {arg}}}"
        )
    try:
        value = yaml.safe_load(arg) if arg else arg
    except (yaml.YAMLError, *YAML_VALUE_ERRORS):
        value = arg
    if isinstance(value, (dict, list)) or value is None:
        value = arg  # keep the text as written, e.g. "timm:[x]"
    return {"name": name, setting: value}


def merge_recipes(base: dict, child: dict) -> dict:
    """``child`` over ``base``: mappings merge; a plugin given another name drops the base settings."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key in KINDS:
            value, old = _as_plugin(value, key), _as_plugin(out.get(key), key)
            if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
                out[key] = {**old, **value}
            else:
                out[key] = copy.deepcopy(value)
        elif key == "data":
            value, old = _as_data(value), _as_data(out.get(key))
            out[key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _as_data(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe's keys after resolving ``extends:`` chains (not yet validated)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        raise RecipeError(f"{path}: extends: circular chain through {' -> '.join(str(p) for p in _seen)}")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"{path}: extends: expected a path to a base recipe, got {base!r}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not _exists(base_path):
        # a bare name such as _jule.yaml also means the shipped base, so a copied recipe keeps working
        shipped = shipped_recipe(base)
        if shipped is None:
            raise RecipeError(f"{path}: extends: base recipe {base!r} not found (looked at {base_path} "
                              f"and the shipped recipes)")
        base_path = shipped
    return merge_recipes(load_raw(base_path, _seen + (resolved,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, *YAML_VALUE_ERRORS):  # not a YAML value: take the text as is
        value = raw
    return parts, value


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(recipe)
    for text in overrides:
        parts, value = parse_override(text)
        top = parts[0]
        if len(parts) == 1:
            out = merge_recipes(out, {top: value})
            continue
        node = out.get(top)
        if top in KINDS:
            node = _as_plugin(node, top) if node is not None else {}
        elif top == "data":
            node = _as_data(node) if node is not None else {}
        elif node is None:
            node = {}
        if not isinstance(node, dict):
            raise RecipeError(f"--set {text!r}: {top} is {node!r}, not a mapping")
        out[top] = node
        for part in parts[1:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text!r}: {part} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_settings(values: dict, specs: dict[str, Setting], where: str, what: str) -> dict:
    out = {}
    for key, value in values.items():
        if key not in specs:
            known = ", ".join(specs) or "none"
            raise RecipeError(f"{where}.{key}: unknown setting {key!r} for {what}{_suggest(key, specs)} (settings: {known})")
        out[key] = specs[key].coerce(value, f"{where}.{key}")
    for spec in specs.values():
        if spec.name not in out:
            if spec.required:
                raise RecipeError(f"{where}.{spec.name}: required setting of {what} is missing")
            out[spec.name] = copy.deepcopy(spec.default)
    return out


def _validate_plugin(kind: str, value: Any, registry: Registry, src: str) -> dict | None:
    where = f"{src}: {kind}"
    if value is None:
        if kind in OPTIONAL_KINDS:
            return None
        raise RecipeError(f"{where}: the recipe must choose a {kind} plugin (registered: {', '.join(registry.names(kind))})")
    value = _as_plugin(value, kind, registry)
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a plugin name or a mapping with 'name', got {value!r}")
    if "name" not in value:
        raise RecipeError(f"{where}: missing 'name' (registered: {', '.join(registry.names(kind))})")
    name = value["name"]
    if not isinstance(name, str):
        raise RecipeError(f"{where}.name: expected a plugin name, got {name!r}")
    info = registry.get(kind, name, where=where)
    settings = {k: v for k, v in value.items() if k != "name"}
    resolved = _check_settings(settings, info.settings, where, f"{kind} {name!r}")
    try:
        info.create(resolved)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {exc}") from None
    return {"name": name, **resolved}


def validate(raw: dict, source: str = "recipe", registry: Registry | None = None) -> dict:
    """Check every key, type and plugin; return the resolved recipe with all defaults filled in."""
    registry = registry or get_registry()
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise RecipeError(
                f"{source}: unknown key {key!r}{_suggest(key, TOP_LEVEL)} (keys: {', '.join(TOP_LEVEL)})"
            )
    out: dict[str, Any] = {}
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"{source}: description: expected text, got {description!r}")
    out["description"] = description
    data = _as_data(raw.get("data", "digits"))
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: data: expected a dataset name, a path or a mapping, got {data!r}")
    out["data"] = _check_settings(data, DATA_SETTINGS, f"{source}: data", "data")
    d = out["data"]
    if d["subset"] is not None and d["subset"] < 2:
        raise RecipeError(f"{source}: data.subset: expected at least 2 samples, got {d['subset']}")
    if d["resize"] is not None and (len(d["resize"]) != 2 or min(d["resize"]) < 1):
        raise RecipeError(f"{source}: data.resize: expected [height, width], got {d['resize']!r}")
    if d["channels"] not in (None, 1, 3):
        raise RecipeError(f"{source}: data.channels: expected 1 or 3, got {d['channels']!r}")
    for key, tp, default in (("clusters", int | None, None), ("seed", int, 0),
                             ("device", Literal["auto", "cpu", "cuda"], "auto"), ("deterministic", bool, True),
                             ("derive", bool, False)):
        value = raw.get(key, default)
        ok, value = _coerce(tp, value)
        if not ok:
            raise RecipeError(f"{source}: {key}: expected {_type_name(tp)}, got {raw.get(key)!r}")
        out[key] = value
    if out["clusters"] is not None and out["clusters"] < 2:
        raise RecipeError(f"{source}: clusters: expected at least 2 clusters, got {out['clusters']}")
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise RecipeError(f"{source}: train: expected a mapping, got {train!r}")
    out["train"] = _check_settings(train, TRAIN_SETTINGS, f"{source}: train", "train")
    for key in ("epochs", "batch_size", "max_periods", "feature_batch_size"):
        minimum = 0 if key == "epochs" else 1
        if out["train"][key] < minimum:
            raise RecipeError(f"{source}: train.{key}: expected at least {minimum}, got {out['train'][key]}")
    for key, value in out["train"].items():
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise RecipeError(f"{source}: train.{key}: expected a finite number within float32 range "
                              f"(training runs in float32), got {value!r}")
    for kind in KINDS:
        out[kind] = _validate_plugin(kind, raw.get(kind), registry, source)
    if out["backbone"] is not None and out["loss"] is None and out["train"]["epochs"] > 0:
        raise RecipeError(
            f"{source}: loss: a recipe with a backbone trains it and must choose a loss "
            f"(registered: {', '.join(registry.names('loss'))}), or set train.epochs: 0"
        )
    return out


@dataclass
class ResolvedRecipe:
    recipe: dict  # validated, every setting explicit
    derivation: Any = None  # auto_recipe.Derivation when the recipe says derive: true


def resolve_recipe(path: str | Path, overrides: list[str] | None = None, *,
                   data_dir: str | Path | None = None) -> ResolvedRecipe:
    """Load, inherit, override and validate a recipe file; with ``derive: true`` derive settings from its data.

    The derived settings go over the recipe files' values and under the overrides, so --set wins.
    """
    overrides = overrides or []
    base, source = load_raw(path), str(path)
    recipe = validate(apply_overrides(base, overrides), source=source)
    if not recipe["derive"]:
        return ResolvedRecipe(recipe)
    from .auto_recipe import derive_from_data, nest

    derivation = derive_from_data(recipe, override_keys(overrides), data_dir=str(data_dir) if data_dir else None,
                                  source=source)
    derived = {**nest(derivation.settings), "description": derivation.description, "derive": False}
    return ResolvedRecipe(validate(apply_overrides(merge_recipes(base, derived), overrides), source=source),
                          derivation)


def load_recipe(path: str | Path, overrides: list[str] | None = None, *,
                data_dir: str | Path | None = None) -> dict:
    """Load, inherit, override and validate a recipe file (deriving settings from the data if it says so)."""
    return resolve_recipe(path, overrides, data_dir=data_dir).recipe


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys that ``--set`` overrides give; a bare name for a plugin or the data sets its name."""
    keys = set()
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1 and (parts[0] in KINDS or parts[0] == "data") and isinstance(value, str):
            parts = [parts[0], "name"]
        keys.add(".".join(parts))
    return keys


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)
