"""TensorBoard events of a run: scalars equal metrics.jsonl, resume purges stale steps, projector limits."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jule_kit.cli import app
from jule_kit.montage import make_montage
import jule_kit.tensorboard as jule_tb
from jule_kit.tensorboard import EMBEDDING_TAG, PROJECTOR_POINTS, SCALARS, RunLogger, reduce_dims, subsample

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def read_events(tb: Path) -> EventAccumulator:
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def expected_scalars(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as (step, value) per tag: a period's step is its number, "final" comes last."""
    out: dict[str, list[tuple[int, float]]] = {}
    periods = sum(1 for r in rows if r["period"] != "final")
    for r in rows:
        step = periods if r["period"] == "final" else r["period"]
        for key, tag in SCALARS.items():
            if r.get(key) is not None:
                out.setdefault(tag, []).append((step, r[key]))
    return out


def assert_events_match_metrics(run: Path) -> EventAccumulator:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    acc = read_events(run / "tb")
    expected = expected_scalars(rows)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, pairs in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in pairs], tag  # one event per step, none stale
        assert [v for _, v in got] == pytest.approx([v for _, v in pairs], rel=1e-6), tag  # float32 in the events
    return acc


def test_jule_run_logs_metrics_histograms_montage_and_projector(runner, usps_subset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(RECIPES / "jule_usps.yaml"), "--set", f"data={usps_subset}",
                                 "--set", "data.subset=300", "--set", "train.epochs=1", "--device", "cpu",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every row: clusters, the labelled metrics and its time; trained periods also loss and lr
    for r in rows:
        assert {"clusters", "nmi", "acc", "ari", "seconds"} <= set(r), r
    trained = [r for r in rows if "loss" in r]
    assert trained and all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in trained)
    assert rows[0]["lr"] == 0.01  # the recipe's initial rate, then the inv policy lowers it
    assert all(a["lr"] > b["lr"] for a, b in zip(trained, trained[1:]))

    acc = assert_events_match_metrics(out)
    assert {"metrics/nmi", "metrics/acc", "metrics/ari", "metrics/nmi_prev_period", "clusters/count",
            "train/loss", "train/lr"} <= set(acc.Tags()["scalars"])
    periods = [r for r in rows if r["period"] != "final"]
    sizes = acc.Histograms("clusters/sizes")
    assert [h.step for h in sizes] == list(range(len(periods) + 1))
    assert [h.histogram_value.num for h in sizes] == [r["clusters"] for r in rows]  # one entry per cluster
    assert all(h.histogram_value.sum == 300 for h in sizes)  # the sizes add up to N
    (montage,) = acc.Images("clusters/montage")
    with Image.open(out / "montage.png") as img:
        assert (montage.width, montage.height) == img.size

    projector = out / "tb" / f"{len(periods):05d}" / EMBEDDING_TAG
    meta = (projector / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "cluster\tlabel" and len(meta) == 301
    with Image.open(projector / "sprite.png") as sprite:
        assert sprite.size == (18 * 16, 18 * 16)  # ceil(sqrt(300)) thumbnails of 16 px a side
    assert len((projector / "tensors.tsv").read_text().splitlines()) == 300
    assert "sprite" in (out / "tb" / "projector_config.pbtxt").read_text()

    # resuming the finished run redoes only the final stage: no duplicate rows or events
    result = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["period"] for r in again] == [r["period"] for r in rows]
    assert_events_match_metrics(out)


def test_resumed_logger_hides_stale_periods(tmp_path):
    labels = np.array([0, 0, 1, 2])
    with RunLogger(tmp_path, first_period=0) as tb:
        for p in range(4):
            tb.period(p, {"clusters": 10 - p, "nmi": 0.1 * p}, labels)
    # TensorBoard reads event files in name order; names start with the creation second, so date the
    # first file a second back, as if its process had started earlier (two writers here may share a second)
    (first,) = tmp_path.glob("events.out.tfevents.*")
    parts = first.name.split(".")
    parts[3] = str(int(parts[3]) - 1)
    first.rename(tmp_path / ".".join(parts))
    # a resumed process rewrites periods 2.. with other values (as after a kill mid-period 3)
    with RunLogger(tmp_path, first_period=2) as tb:
        for p in range(2, 4):
            tb.period(p, {"clusters": 10 - p, "nmi": 0.5 + p}, labels)
    acc = read_events(tmp_path)
    nmi = acc.Scalars("metrics/nmi")
    assert [e.step for e in nmi] == [0, 1, 2, 3]
    assert [e.value for e in nmi] == pytest.approx([0.0, 0.1, 2.5, 3.5])
    assert [e.step for e in acc.Scalars("clusters/count")] == [0, 1, 2, 3]


def test_projector_is_subsampled_and_the_sprite_fits(tmp_path, monkeypatch):
    n = 2500
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 48, 64), dtype=np.uint8)  # wider than high, larger than 32 px
    labels = rng.integers(0, 60, n)
    features = torch.from_numpy(rng.normal(size=(n, 12)).astype(np.float32))
    monkeypatch.setattr(jule_tb, "PROJECTOR_DIMS", 8)  # small, so the test checks the reduction cheaply
    keep = subsample(n, PROJECTOR_POINTS)
    assert len(np.unique(keep)) == PROJECTOR_POINTS and (subsample(n, PROJECTOR_POINTS) == keep).all()
    with RunLogger(tmp_path, first_period=0) as tb:
        montage = make_montage(images, labels, None)
        tb.final(3, {"clusters": 60}, montage, features, labels, None, images)
    folder = tmp_path / "00003" / EMBEDDING_TAG
    with Image.open(folder / "sprite.png") as sprite:
        assert sprite.size == (45 * 32, 45 * 32) and max(sprite.size) <= 8192  # ceil(sqrt(2000)) = 45
    meta = (folder / "metadata.tsv").read_text().splitlines()
    assert len(meta) == PROJECTOR_POINTS and meta[:3] == [str(labels[i]) for i in keep[:3]]  # no header: one column
    rows = (folder / "tensors.tsv").read_text().splitlines()
    assert len(rows) == PROJECTOR_POINTS and len(rows[0].split("\t")) == 8  # reduced from 12 dimensions


@pytest.mark.parametrize("n, d", [(60, 20), (15, 40)])  # via the D x D and the N x N Gram matrix
def test_reduce_dims_keeps_the_top_principal_components(n, d):
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(n, d)) * np.linspace(5, 0.1, d))
    y = reduce_dims(x.float(), 6)
    u, s, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    ref = u[:, :6] * s[:6]
    assert y.shape == (n, 6)
    assert torch.allclose(y.double().abs(), ref.abs(), atol=1e-3 * float(s[0]))  # up to each component's sign
    assert torch.equal(reduce_dims(x[:, :5], 6), x[:, :5])  # few dimensions: left as they are
