"""Bad input ends in one line and exit code 2: diverging training, and recipes of any shape (fuzzed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jule_kit import engine
from jule_kit.cli import app
from jule_kit.recipe import DATA_SETTINGS, TOP_LEVEL, TRAIN_SETTINGS
from jule_kit.registry import get_registry

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def one_line_error(result, *fragments: str) -> str:
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def jule_run(runner, data: Path, out: Path, *sets: str):
    args = ["run", str(RECIPES / "jule_usps.yaml"), "--set", f"data={data}", "--set", "data.subset=300",
            "--set", "train.epochs=1", "--device", "cpu", "--out", str(out), "--quiet"]
    return runner.invoke(app, args + [x for s in sets for x in ("--set", s)])


# -- diverging training ----------------------------------------------------------------------


def test_huge_learning_rate_stops_with_one_line(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    text = one_line_error(jule_run(runner, usps_subset, out, "train.lr=1e20"),
                          "period 0, epoch 1", "nan", "lower train.lr", "--resume")
    assert str(out / "recipe.yaml") in text
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["lr"] == 1e20  # the run can be inspected
    assert not (out / "summary.json").exists() and not (out / "checkpoint.pt").exists()


def test_non_finite_features_after_a_period_keep_the_checkpoint(runner, usps_subset, tmp_path, monkeypatch):
    real = engine.Experiment.extract

    def poisoned(self, model, images):  # as if the network had blown up while training period 0
        return torch.full_like(real(self, model, images), float("nan"))

    monkeypatch.setattr(engine.Experiment, "extract", poisoned)
    out = tmp_path / "run"
    one_line_error(jule_run(runner, usps_subset, out), "period 1", "NaN or Inf", "lower train.lr")
    assert (out / "recipe.yaml").exists() and not (out / "summary.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["period"] == 0 and torch.isfinite(state["model"]["fc.weight"]).all()


def out_of_memory_after(monkeypatch, training: bool, calls: int) -> None:
    """Make the CNN raise CUDA's out-of-memory error after ``calls`` forward passes of one kind."""
    from jule_kit.plugins.backbone.jule_cnn import JuleCNN

    real, seen = JuleCNN.forward, [0]

    def forward(self, x):
        if torch.is_grad_enabled() == training:
            seen[0] += 1
            if seen[0] > calls:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, x)

    monkeypatch.setattr(JuleCNN, "forward", forward)


@pytest.mark.parametrize("training", [True, False], ids=["training", "features"])
def test_cuda_out_of_memory_names_the_batch_size_and_keeps_the_checkpoint(runner, usps_subset, tmp_path,
                                                                           monkeypatch, training):
    # period 0 trains 3 batches of 100 (300 images, 1 epoch); period 1 starts by computing features
    out_of_memory_after(monkeypatch, training, calls=3 if training else 0)
    out = tmp_path / "run"
    key, size = ("train.batch_size", 100) if training else ("train.feature_batch_size", 1000)
    text = one_line_error(jule_run(runner, usps_subset, out, "clusterer.eta=0.5"),
                          "period 1", "CUDA out of memory", f"{key}={size}", f"{key}={size // 2}",
                          f"julekit run --resume {out}")
    assert str(out / "recipe.yaml") in text
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["period"] == 0  # the last completed period is kept for --resume
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("value", ["1e300", ".nan", "-.inf"])
def test_learning_rate_must_fit_float32(runner, value):
    result = runner.invoke(app, ["validate", str(RECIPES / "jule_usps.yaml"), "--set", f"train.lr={value}"])
    one_line_error(result, "train.lr", "finite")


def test_exponent_without_dot_is_a_number(runner):
    result = runner.invoke(app, ["validate", str(RECIPES / "jule_usps.yaml"), "--set", "train.lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["train"]["lr"] == 0.001  # PyYAML alone reads 1e-3 as text


# -- recipe fuzzing ----------------------------------------------------------------------------

_registry = get_registry()
NAMES = sorted({p.name for p in _registry.all()} | {s for p in _registry.all() for s in p.settings})
WORDS = st.sampled_from(sorted(set(TOP_LEVEL) | set(TRAIN_SETTINGS) | set(DATA_SETTINGS) | {"name"} | set(NAMES)))
# YAML that PyYAML loads into surprising values or fails on outside YAMLError, and rich markup
RAW_VALUES = st.sampled_from([
    "2001-13-45", "2001-02-30 25:61:00", "!!int 0x", "!!float abc", "!!binary '!!'", "!!set {a, b}", "!!python/name:os",
    "&a [*a]", "{a: [1, {b: c}]}", "1e3", ".nan", "-.inf", "~", "[/x]", "'[bold]x[/]'", '"\\x00"', "[" * 200,
    "'" + "x" * 300 + "'", "'../../../../etc'", "'/'", "''", "0o17", "0x1F", "+12_000", "yes", "No",
])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | WORDS
           | st.just(str(RECIPES / "_jule.yaml")))
KEYS = WORDS | st.text(max_size=10) | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
TREES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5),
                     max_leaves=20)
RAW_LINES = st.lists(st.tuples(WORDS | st.text(max_size=8), RAW_VALUES | st.text(max_size=20)), max_size=6).map(
    lambda pairs: "\n".join(f"{k}: {v}" for k, v in pairs))
DOCUMENTS = st.dictionaries(KEYS, TREES, max_size=8) | TREES | RAW_LINES | st.text() | st.binary()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENTS)
def test_validate_never_crashes(runner, tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    if isinstance(document, bytes):
        path.write_bytes(document)
    elif isinstance(document, str):
        path.write_bytes(document.encode("utf-8", "surrogatepass"))
    else:
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), (result.exit_code, repr(result.exception), path.read_bytes()[:500])
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1, result.output


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.lists(WORDS | st.text(max_size=6), min_size=1, max_size=3).map(".".join),
       value=RAW_VALUES | st.text(max_size=20))
def test_set_overrides_never_crash(runner, key, value):
    result = runner.invoke(app, ["validate", str(RECIPES / "jule_usps.yaml"), "--set", f"{key}={value}"])
    assert result.exit_code in (0, 2), (key, value, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1, result.output
