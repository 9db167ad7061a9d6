"""Dataset loading: formats, error messages, search path, subsets and listing."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from jule_kit.data import DATA_ENV, list_datasets, load_dataset, resolve, search_path
from jule_kit.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No $JULEKIT_DATA and a cwd without ./data, so only what a test writes is found."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def images(n=10, c=1, h=4, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def png(path: Path, value: int = 0, size=(6, 4), mode="L") -> None:
    """A tiny image: size is (W, H) as PIL takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


# ---------------------------------------------------------------- .npz

def test_npz_round_trip_remaps_labels(tmp_path):
    x = images(3)
    np.savez(tmp_path / "toy.npz", images=x, labels=np.array([3, 3, 7]))
    d = load_dataset(str(tmp_path / "toy.npz"))
    assert d.name == "toy" and d.source == str((tmp_path / "toy.npz").resolve())
    np.testing.assert_array_equal(d.images, x)
    assert d.labels.dtype == np.int64 and d.labels.tolist() == [0, 0, 1]
    assert (d.n, d.shape, d.n_classes, d.paths, d.skipped) == (3, (1, 4, 5), 2, None, [])


def test_npz_rank3_and_no_labels(tmp_path):
    x = images(4)[:, 0]
    np.savez(tmp_path / "flat.npz", images=x)
    d = load_dataset(str(tmp_path / "flat.npz"))
    assert d.images.shape == (4, 1, 4, 5) and d.labels is None and d.n_classes is None
    np.testing.assert_array_equal(d.images[:, 0], x)


@pytest.mark.parametrize("arrays, expected", [
    ({"pixels": images()}, ["'images'", "pixels"]),
    ({"images": images().astype(np.float32)}, ["'images'", "float32", "uint8"]),
    ({"images": images()[:, 0, 0]}, ["'images'", "rank 2"]),
    ({"images": images(c=4)}, ["'images'", "4 channels"]),
    ({"images": images(), "labels": np.zeros(9, int)}, ["'labels' has 9 entries but 'images' has 10"]),
    ({"images": images(), "labels": np.zeros(10, np.float32)}, ["'labels'", "float32", "integer"]),
    ({"images": images(), "labels": np.zeros((10, 2), int)}, ["'labels'", "1-D"]),
    ({"images": images(n=0)}, ["'images'", "0 images"]),
])
def test_npz_errors_name_file_and_key(tmp_path, arrays, expected):
    np.savez(tmp_path / "bad.npz", **arrays)
    msg = data_error(load_dataset, str(tmp_path / "bad.npz"))
    assert "bad.npz" in msg
    for part in expected:
        assert part in msg


def test_npz_missing_and_corrupt(tmp_path):
    assert "missing.npz" in data_error(load_dataset, str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file at all")
    msg = data_error(load_dataset, str(tmp_path / "junk.npz"))
    assert "junk.npz: cannot read as .npz" in msg


# ---------------------------------------------------------------- .h5

def test_h5_float_data_and_one_based_labels(tmp_path):
    x = images(6, c=3)
    folder = tmp_path / "toyh5"
    folder.mkdir()
    with h5py.File(folder / "data4torch.h5", "w") as f:
        f["data"] = x.astype(np.float32) / 255.0
        f["labels"] = np.array([1, 2, 2, 3, 1, 3], np.float64)
    d = load_dataset(str(folder / "data4torch.h5"))
    assert d.name == "toyh5" and d.images.dtype == np.uint8 and d.shape == (3, 4, 5)
    np.testing.assert_array_equal(d.images, x)
    assert d.labels.dtype == np.int64 and d.labels.tolist() == [0, 1, 1, 2, 0, 2]
    # Values above 1 are clipped to 0..255 and rounded rather than scaled.
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        f["data"] = np.array([[[[-3.0, 2.4, 300.0]]]])
    assert load_dataset(str(tmp_path / "wide.h5")).images.ravel().tolist() == [0, 2, 255]


def test_h5_errors(tmp_path):
    (tmp_path / "corrupt.h5").write_bytes(b"\x00garbage" * 10)
    assert "corrupt.h5: cannot read as HDF5" in data_error(load_dataset, str(tmp_path / "corrupt.h5"))
    with h5py.File(tmp_path / "nodata.h5", "w") as f:
        f["pixels"] = np.zeros((2, 1, 3, 3))
    msg = data_error(load_dataset, str(tmp_path / "nodata.h5"))
    assert "nodata.h5" in msg and "'data'" in msg and "pixels" in msg
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["data"] = np.zeros((3, 1, 3, 3))
        f["labels"] = np.zeros(2)
    assert "short.h5: 'labels' has 2 entries but 'data' has 3" in data_error(load_dataset, str(tmp_path / "short.h5"))


# ---------------------------------------------------------------- image folders

def test_folder_with_classes_skips_broken_and_ignores_other_files(tmp_path):
    root = tmp_path / "shapes"
    png(root / "b_class" / "1.png", 200)
    png(root / "a_class" / "2.png", 10)
    png(root / "a_class" / "1.png", 20)
    (root / "a_class" / "notes.txt").write_text("not an image")
    (root / "b_class" / "broken.png").write_bytes(b"garbage bytes, not a png")
    d = load_dataset(str(root))
    assert d.name == "shapes" and d.images.shape == (3, 1, 4, 6)
    assert d.labels.tolist() == [0, 0, 1]
    assert [Path(p).relative_to(root).as_posix() for p in d.paths] == ["a_class/1.png", "a_class/2.png", "b_class/1.png"]
    assert d.images[:, 0, 0, 0].tolist() == [20, 10, 200]
    assert d.skipped == [str(root / "b_class" / "broken.png")]


def test_flat_folder_rgb_has_no_labels(tmp_path):
    png(tmp_path / "flat" / "x.PNG", 50, mode="RGB")
    png(tmp_path / "flat" / "y.png", 60)  # one gray image among colour ones is repeated to 3 channels
    d = load_dataset(str(tmp_path / "flat"))
    assert d.labels is None and d.images.shape == (2, 3, 4, 6)
    assert d.images[0, :, 0, 0].tolist() == [50, 205, 7] and d.images[1, :, 0, 0].tolist() == [60, 60, 60]
    assert load_dataset(str(tmp_path / "flat"), channels=1).shape == (1, 4, 6)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    msg = data_error(load_dataset, str(tmp_path / "empty"))
    assert "empty: no readable images" in msg and ".png" in msg


def test_size_mismatch_and_resize(tmp_path):
    png(tmp_path / "mixed" / "a.png", size=(6, 4))
    png(tmp_path / "mixed" / "b.png", size=(8, 8))
    msg = data_error(load_dataset, str(tmp_path / "mixed"))
    assert "a.png" in msg and "b.png" in msg and "data.resize" in msg
    d = load_dataset(str(tmp_path / "mixed"), resize=[5, 7])
    assert d.images.shape == (2, 1, 5, 7)


# ---------------------------------------------------------------- digits and conversions

def test_digits():
    d = load_dataset("digits")
    assert (d.name, d.source, d.n, d.shape, d.n_classes) == ("digits", "sklearn:digits", 1797, (1, 8, 8), 10)
    assert d.images.dtype == np.uint8 and d.images.min() == 0 and d.images.max() == 255
    assert d.labels.dtype == np.int64


def test_channels_and_resize_after_loading(tmp_path):
    x = images(2, c=3)
    np.savez(tmp_path / "rgb.npz", images=x)
    gray = load_dataset(str(tmp_path / "rgb.npz"), channels=1)
    np.testing.assert_array_equal(gray.images[:, 0], np.rint(x.mean(axis=1)).astype(np.uint8))
    big = load_dataset(str(tmp_path / "rgb.npz"), resize=(8, 10))
    assert big.images.shape == (2, 3, 8, 10)
    assert load_dataset("digits", channels=3, subset=5).shape == (3, 8, 8)
    assert "channels" in data_error(load_dataset, "digits", channels=2)
    assert "resize" in data_error(load_dataset, "digits", resize=[0, 4])


# ---------------------------------------------------------------- subsets

def test_subset_is_deterministic(tmp_path):
    a = load_dataset("digits", subset=50, seed=1)
    b = load_dataset("digits", subset=50, seed=1)
    c = load_dataset("digits", subset=50, seed=2)
    full = load_dataset("digits")
    keep = np.sort(np.random.default_rng(1).permutation(full.n)[:50])
    np.testing.assert_array_equal(a.images, full.images[keep])
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert load_dataset("digits", subset=5000).n == 1797
    assert "subset" in data_error(load_dataset, "digits", subset=0)


def test_subset_keeps_paths_aligned(tmp_path):
    for i in range(6):
        png(tmp_path / "f" / f"{i}.png", value=i * 10)
    d = load_dataset(str(tmp_path / "f"), subset=3, seed=0)
    assert [int(Path(p).stem) * 10 for p in d.paths] == d.images[:, 0, 0, 0].tolist()


# ---------------------------------------------------------------- search path, resolve, listing

def test_search_path_order(tmp_path, monkeypatch):
    assert search_path() == [Path("data"), Path("../shared/datasets")]
    monkeypatch.setenv(DATA_ENV, os.pathsep.join([str(tmp_path / "e1"), "", str(tmp_path / "e2")]))
    assert search_path(tmp_path / "mine") == [tmp_path / "mine", tmp_path / "e1", tmp_path / "e2",
                                              Path("data"), Path("../shared/datasets")]


def test_resolve_by_name(tmp_path, monkeypatch):
    np.savez(tmp_path / "toy.npz", images=images(2))
    (tmp_path / "toy").mkdir()  # the .npz takes precedence over a folder of the same name
    assert resolve("toy", data_dir=tmp_path) == tmp_path / "toy.npz"
    assert resolve("digits") == "sklearn:digits"
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    d = load_dataset("toy")
    assert d.name == "toy" and d.n == 2


def test_resolve_error_lists_directories(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    msg = data_error(resolve, "nosuch", data_dir=tmp_path / "mine")
    assert msg.startswith("dataset 'nosuch' not found; looked in: ")
    for d in (tmp_path / "mine", tmp_path / "env", "data", "../shared/datasets"):
        assert str(d) in msg
    assert "--data-dir" in msg and DATA_ENV in msg


def test_list_datasets(tmp_path):
    np.savez(tmp_path / "toy.npz", images=images(7, c=3), labels=np.array([5, 5, 1, 1, 2, 2, 2]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    png(tmp_path / "pics" / "a" / "1.png")
    png(tmp_path / "pics" / "b" / "1.png")
    found = {d["name"]: d for d in list_datasets(tmp_path)}
    assert found["toy"] == {"name": "toy", "path": str(tmp_path / "toy.npz"), "n": 7, "classes": 3, "shape": (3, 4, 5)}
    assert found["pics"]["n"] == 2 and found["pics"]["classes"] == 2 and found["pics"]["shape"] == (1, 4, 6)
    assert "junk" not in found and found["digits"]["n"] == 1797


def test_real_usps(data_dir):
    d = load_dataset("usps", data_dir=data_dir)
    assert (d.n, d.shape, d.n_classes) == (11000, (1, 16, 16), 10)
