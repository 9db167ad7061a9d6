"""Datasets: .npz, JULE's data4torch.h5, image folders and scikit-learn's digits, as uint8 (N, C, H, W)."""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

DEFAULT_SEARCH = ("./data", "../shared/datasets")  # relative to the current directory
DATA_ENV = "JULEKIT_DATA"
DIGITS = "sklearn:digits"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
H5_EXTS = (".h5", ".hdf5")
TORCH_H5 = "data4torch.h5"
# PIL modes that carry no colour: a folder of only these loads as one channel.
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
EXPECTED = "expected uint8 (N, C, H, W) with C in {1, 3}"


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray | None  # int64 (N,) in 0..K-1
    source: str
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def n_classes(self) -> int | None:
        return None if self.labels is None else int(np.unique(self.labels).size)


# ---------------------------------------------------------------- finding datasets

def search_path(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """data_dir, then each $JULEKIT_DATA entry, then ./data and ../shared/datasets (duplicates dropped)."""
    dirs = [data_dir] if data_dir is not None else []
    dirs += [e for e in os.environ.get(DATA_ENV, "").split(os.pathsep) if e.strip()]
    dirs += list(DEFAULT_SEARCH)
    out: list[Path] = []
    for d in dirs:
        p = Path(os.path.expanduser(str(d)))
        if p not in out:
            out.append(p)
    return out


def _find_in(folder: Path, name: str) -> Path | None:
    """The file or folder that `name` means inside `folder`, in resolve()'s order of preference."""
    for cand in (folder / f"{name}.npz", folder / f"{name}.h5", folder / f"{name}.hdf5",
                 folder / name / TORCH_H5):
        if cand.is_file():
            return cand
    cand = folder / name
    return cand if cand.exists() else None


def resolve(spec: str, data_dir: str | os.PathLike | None = None) -> Path | str:
    """Turn a dataset spec (digits, a path, or a bare name on the search path) into a Path or "sklearn:digits"."""
    spec = str(spec)
    if spec in ("digits", DIGITS):
        return DIGITS
    path = Path(os.path.expanduser(spec))
    if path.exists():
        return path
    if "/" in spec or os.sep in spec:  # clearly a path, not a name to search for
        raise DataError(f"{spec}: no such file or folder; expected a .npz/.h5 file, an image folder or a dataset name")
    dirs = search_path(data_dir)
    for d in dirs:
        found = _find_in(d, spec)
        if found is not None:
            return found
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(f"dataset '{spec}' not found; looked in: {looked} (set --data-dir or ${DATA_ENV})")


# ---------------------------------------------------------------- helpers

def _contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_images(images: np.ndarray, where: str, key: str) -> np.ndarray:
    """Accept (N, H, W) as one channel; require (N, C, H, W) with C in {1, 3} and N > 0."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"{where}: array '{key}' has rank {images.ndim} (shape {images.shape}); {EXPECTED}")
    if images.shape[1] not in (1, 3):
        raise DataError(f"{where}: array '{key}' has {images.shape[1]} channels (shape {images.shape}); {EXPECTED}"
                        " (channels-last data must be transposed to N, C, H, W)")
    if images.shape[0] == 0:
        raise DataError(f"{where}: array '{key}' holds 0 images; {EXPECTED} with N > 0")
    return images


def _check_labels(labels: np.ndarray, n: int, where: str, key: str, image_key: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{where}: '{key}' has shape {labels.shape}; expected 1-D ({n},)")
    if labels.shape[0] != n:
        raise DataError(f"{where}: '{key}' has {labels.shape[0]} entries but '{image_key}' has {n}")
    return _contiguous(labels)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] scaled by 255; anything else clipped to 0..255 and rounded."""
    if x.dtype == np.uint8:
        return x
    scale = x.dtype.kind == "f" and bool(np.nanmax(x) <= 1.0)
    x = np.nan_to_num(x.astype(np.float64))
    if scale:
        x = x * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- formats

def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a plain .npy renamed to .npz
        raise DataError(f"{path}: cannot read as .npz (it holds a single array, not named arrays 'images'/'labels')")
    with npz:
        if "images" not in npz.files:
            present = ", ".join(npz.files) or "none"
            raise DataError(f"{path}: no array 'images' (arrays present: {present}); {EXPECTED}")
        try:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read as .npz ({e})") from e
    if images.dtype != np.uint8:
        raise DataError(f"{path}: array 'images' has dtype {images.dtype}; {EXPECTED}")
    images = _check_images(images, str(path), "images")
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: array 'labels' has dtype {labels.dtype}; expected integer class ids (N,)")
        labels = _check_labels(labels, images.shape[0], str(path), "labels", "images")
    return images, labels


def _load_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                present = ", ".join(f.keys()) or "none"
                raise DataError(f"{path}: no dataset 'data' (datasets present: {present}); expected 'data' (N, C, H, W)"
                                " and 'labels' (N,)")
            data = f["data"][()]
            labels = f["labels"][()] if "labels" in f else None
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: cannot read as HDF5 ({e})") from e
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise DataError(f"{path}: dataset 'data' has dtype {data.dtype}; expected a numeric (N, C, H, W) array")
    data = _check_images(data, str(path), "data")
    images = _to_uint8(data)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2 and 1 in labels.shape:  # Torch often writes labels as (N, 1)
            labels = labels.reshape(-1)
        if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)) \
                or (labels.dtype.kind == "f" and not np.isfinite(labels).all()):
            raise DataError(f"{path}: dataset 'labels' has dtype {labels.dtype} or non-finite values;"
                            " expected numeric class ids (N,)")
        labels = _check_labels(labels, images.shape[0], str(path), "labels", "data")
    return images, labels


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders that hold images (hidden ones like .ipynb_checkpoints excluded), sorted by name."""
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and _image_files(d, recursive=True))


def _folder_entries(folder: Path) -> tuple[list[tuple[Path, int]], list[Path]]:
    """(image file, class index) pairs and the class folders; a flat folder has no classes (index -1)."""
    classes = _class_dirs(folder)
    if classes:  # one class per sub-folder
        return [(p, k) for k, d in enumerate(classes) for p in _image_files(d, recursive=True)], classes
    return [(p, -1) for p in _image_files(folder, recursive=False)], []


def _no_images(folder: Path, skipped: list[str]) -> DataError:
    return DataError(f"{folder}: no readable images ({', '.join(IMAGE_EXTS)})"
                     + (f"; {len(skipped)} could not be read" if skipped else ""))


def _load_folder(folder: Path, resize: tuple[int, int] | None, channels: int | None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    from PIL import Image

    entries, classes = _folder_entries(folder)
    arrays: list[np.ndarray] = []
    gray: list[bool] = []
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    first: tuple[str, tuple[int, int]] | None = None
    for p, k in entries:
        try:
            with Image.open(p) as im:
                im.load()
                is_gray = im.mode in GRAY_MODES
                mode = {1: "L", 3: "RGB"}.get(channels or 0, "L" if is_gray else "RGB")
                im = im.convert(mode)
                if resize is not None:
                    im = im.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(str(p))  # unreadable or not really an image: report it, keep going
            continue
        size = arr.shape[:2]
        if first is None:
            first = (str(p), size)
        elif size != first[1]:
            raise DataError(f"{folder}: images differ in size: {first[0]} is {first[1][0]}x{first[1][1]} (HxW) but {p}"
                            f" is {size[0]}x{size[1]}; set data.resize: [H, W] to resize them all")
        arrays.append(arr)
        gray.append(is_gray)
        paths.append(str(p))
        labels.append(k)
    if not arrays:
        raise _no_images(folder, skipped)
    if channels is None and not all(gray):
        # Mixed folder: gray images were read as one channel; repeat it to match the colour ones.
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    stack = np.stack(arrays)
    images = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images), (np.asarray(labels, np.int64) if classes else None), paths, skipped


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


# ---------------------------------------------------------------- transforms

def _set_channels(images: np.ndarray, channels: int) -> np.ndarray:
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 1:
        return np.rint(images.mean(axis=1, keepdims=True)).astype(np.uint8)
    return np.repeat(images, 3, axis=1)


def _resize(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    n, c, h, w = images.shape
    if (h, w) == hw:
        return images
    out = np.empty((n, c, *hw), np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
        arr = np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def _check_options(spec: str, subset: Any, resize: Any, channels: Any) -> tuple[int, int] | None:
    if channels is not None and channels not in (1, 3):
        raise DataError(f"{spec}: channels {channels!r}; expected 1 (grayscale) or 3 (RGB)")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < 1):
        raise DataError(f"{spec}: subset {subset!r}; expected a positive number of samples")
    if resize is None:
        return None
    ok = isinstance(resize, (list, tuple)) and len(resize) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in resize)
    if not ok:
        raise DataError(f"{spec}: resize {resize!r}; expected two positive integers [H, W]")
    return int(resize[0]), int(resize[1])


# ---------------------------------------------------------------- public entry points

def _located(spec: str, where: Path | str) -> tuple[str, Path | str]:
    """The dataset's name and the file or folder to read (a folder holding data4torch.h5 means that file)."""
    if where == DIGITS:
        return "digits", DIGITS
    path = Path(where)
    bare = "/" not in str(spec) and os.sep not in str(spec) and not Path(str(spec)).exists()
    name = str(spec) if bare else (path.parent.name if path.name == TORCH_H5 else path.stem)
    if path.is_dir() and (path / TORCH_H5).is_file():
        path = path / TORCH_H5
    return name, path


def _subset_indices(n: int, subset: int | None, seed: int) -> np.ndarray | None:
    """The sorted indices of a deterministic random subset, or None when the subset is everything."""
    if subset is None or subset >= n:
        return None
    return np.sort(np.random.default_rng(seed).permutation(n)[:subset])


def load_dataset(spec: str, *, data_dir: str | os.PathLike | None = None, subset: int | None = None, seed: int = 0,
                 resize: tuple[int, int] | list[int] | None = None, channels: int | None = None) -> Dataset:
    """Load a dataset as uint8 (N, C, H, W) with contiguous int64 labels, then convert, resize and subset it."""
    hw = _check_options(str(spec), subset, resize, channels)
    name, path = _located(spec, resolve(spec, data_dir))
    paths: list[str] | None = None
    skipped: list[str] = []
    if path == DIGITS:
        source = DIGITS
        images, labels = _load_digits()
    else:
        path = Path(path)
        source = str(path.resolve())
        if path.is_dir():
            images, labels, paths, skipped = _load_folder(path, hw, channels)
        elif path.suffix.lower() == ".npz":
            images, labels = _load_npz(path)
        elif path.suffix.lower() in H5_EXTS:
            images, labels = _load_h5(path)
        else:
            raise DataError(f"{path}: unsupported file type '{path.suffix}'; expected .npz, .h5/.hdf5 or an image folder")

    keep = _subset_indices(images.shape[0], subset, seed)
    if keep is not None:
        # Subsetting before the per-image conversions gives the same result for less work.
        images = images[keep]
        if labels is not None:
            labels = _contiguous(labels[keep])  # a subset can miss classes; keep ids 0..K-1
        if paths is not None:
            paths = [paths[i] for i in keep]
    if channels is not None:
        images = _set_channels(images, channels)
    if hw is not None:
        images = _resize(images, hw)
    return Dataset(name=name, images=np.ascontiguousarray(images), labels=labels, source=source,
                   paths=paths, skipped=skipped)


@dataclass(frozen=True)
class DataSummary:
    """A dataset as a recipe's ``data`` settings load it (subset, channels, resize), read from headers only."""

    name: str
    n: int
    n_classes: int | None
    shape: tuple[int, int, int]  # (C, H, W); a folder of several sizes: the median height and width
    mixed_sizes: bool = False  # image files of several sizes and no resize: loading needs data.resize
    mixed_modes: bool = False  # grey and colour image files together: loaded as RGB


def summarize_dataset(spec: str, *, data_dir: str | os.PathLike | None = None, subset: int | None = None,
                      seed: int = 0, resize: tuple[int, int] | list[int] | None = None,
                      channels: int | None = None) -> DataSummary:
    """N, classes and (C, H, W) of what ``load_dataset`` with the same arguments gives, without reading pixels."""
    hw = _check_options(str(spec), subset, resize, channels)
    name, path = _located(spec, resolve(spec, data_dir))
    sizes = np.zeros((0, 2), np.int64)  # (H, W) per image file, for a folder
    gray = np.zeros(0, bool)
    if path == DIGITS:
        images, labels = _load_digits()
        n, shape = images.shape[0], images.shape[1:]
    elif Path(path).is_dir():
        labels, sizes, gray = _folder_headers(Path(path))
        n, shape = len(sizes), None
    else:
        try:
            n, shape, labels = _array_header(Path(path))
        except Exception:  # malformed: loading it says what is wrong in one line (or copes with it)
            data = load_dataset(spec, data_dir=data_dir)
            n, shape, labels = data.n, data.shape, data.labels
    if len(sizes):  # a folder, read as a whole as loading does: colour if any image is; the median size
        shape = (1 if gray.all() else 3, int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1])))
    keep = _subset_indices(n, subset, seed)
    if keep is not None:
        n, labels = len(keep), None if labels is None else labels[keep]
    c, h, w = (int(x) for x in shape)
    return DataSummary(name=name, n=int(n), n_classes=None if labels is None else int(np.unique(labels).size),
                       shape=(channels or c, *(hw or (h, w))),
                       mixed_sizes=hw is None and len(np.unique(sizes, axis=0)) > 1,
                       mixed_modes=channels is None and bool(gray.any()) and not bool(gray.all()))


def _folder_headers(folder: Path) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Class index (None for a flat folder), (H, W) and whether grey, of each readable image file, from the
    headers alone (PIL reads pixels only when asked); unreadable files are left out, as loading skips them."""
    from PIL import Image

    entries, classes = _folder_entries(folder)
    labels, sizes, gray, skipped = [], [], [], []
    for p, k in entries:
        try:
            with Image.open(p) as im:
                size, is_gray = (im.height, im.width), im.mode in GRAY_MODES
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(str(p))
            continue
        labels.append(k)
        sizes.append(size)
        gray.append(is_gray)
    if not sizes:
        raise _no_images(folder, skipped)
    return (np.asarray(labels) if classes else None), np.asarray(sizes, np.int64), np.asarray(gray, bool)


def _array_header(path: Path) -> tuple[int, tuple[int, int, int], np.ndarray | None]:
    """N, (C, H, W) and the labels of a .npz or .h5 file, from the array headers (the images are not read)."""
    if path.suffix.lower() == ".npz":
        with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        if dtype != np.uint8:
            raise ValueError("not a julekit image array")
        with np.load(path, allow_pickle=False) as npz:
            labels = npz["labels"] if "labels" in npz.files else None
    elif path.suffix.lower() in H5_EXTS:
        import h5py

        with h5py.File(path, "r") as f:
            shape = f["data"].shape
            labels = np.asarray(f["labels"][()]).reshape(-1) if "labels" in f else None
    else:
        raise ValueError("not an array file")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[1] not in (1, 3)) or shape[0] == 0:
        raise ValueError("not an image array")
    c, h, w = (1, *shape[1:]) if len(shape) == 3 else shape[1:]
    if labels is not None and labels.shape[0] != shape[0]:
        raise ValueError("labels do not match the images")
    return int(shape[0]), (int(c), int(h), int(w)), labels


def _folder_info(path: Path) -> tuple[int, int | None, tuple[int, ...] | None]:
    """File count and class count; shape from the first image's header (PIL opens lazily)."""
    from PIL import Image

    entries, classes = _folder_entries(path)
    if not entries:
        raise ValueError("no images")
    shape = None
    try:
        with Image.open(entries[0][0]) as im:
            shape = (1 if im.mode in GRAY_MODES else 3, im.height, im.width)
    except (OSError, ValueError, SyntaxError):
        pass
    return len(entries), (len(classes) or None), shape


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Datasets on the search path (first occurrence of a name wins) plus the embedded digits; cheap to call."""
    out: list[dict] = []
    seen = {"digits"}  # the name always means the embedded set
    for d in search_path(data_dir):
        if not d.is_dir():
            continue
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        names = []
        for e in entries:
            if e.is_file() and e.suffix.lower() in (".npz", *H5_EXTS):
                names.append(e.stem)
            elif e.is_dir() and not e.name.startswith("."):
                names.append(e.name)
        for name in dict.fromkeys(names):
            if name in seen:
                continue
            path = _find_in(d, name)
            try:
                if path is None:
                    continue
                if path.is_dir():
                    n, classes, shape = _folder_info(path)
                else:
                    n, shape, labels = _array_header(path)
                    classes = None if labels is None else int(np.unique(labels).size)
            except Exception:  # unreadable or not a dataset: listing must not fail
                continue
            seen.add(name)
            out.append({"name": name, "path": str(path), "n": n, "classes": classes,
                        "shape": tuple(int(s) for s in shape) if shape else None})
    out.append({"name": "digits", "path": DIGITS, "n": 1797, "classes": 10, "shape": (1, 8, 8)})
    return out


__all__ = ["DATA_ENV", "DEFAULT_SEARCH", "DataSummary", "Dataset", "list_datasets", "load_dataset", "resolve",
           "search_path", "summarize_dataset"]
