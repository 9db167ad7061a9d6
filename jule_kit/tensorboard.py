"""TensorBoard logging of a run into ``tb/``: per-period scalars and cluster sizes, then the
montage and an embedding-projector view of the final features. The step is the period;
the final stage is logged at step = number of periods."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .montage import thumbnail

TB_DIR = "tb"
# metrics.jsonl key -> TensorBoard tag
SCALARS = {
    "nmi": "metrics/nmi",
    "acc": "metrics/acc",
    "ari": "metrics/ari",
    "nmi_prev": "metrics/nmi_prev_period",
    "clusters": "clusters/count",
    "loss": "train/loss",
    "lr": "train/lr",
}
PROJECTOR_POINTS = 2000  # the sprite is a ceil(sqrt(N)) square grid and must stay <= 8192 px a side
PROJECTOR_THUMB = 32  # 45 x 32 px = 1440 px for 2000 points; 8192 / 45 = 182 px would be the limit
PROJECTOR_DIMS = 256  # the browser runs PCA / t-SNE itself; more dimensions only bloat tensors.tsv
EMBEDDING_TAG = "features"


def subsample(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices, evenly spaced over 0..n-1: the same points on every run."""
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


def _eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigen-decomposition on one thread: on busy cores the threaded one ran 30x slower (1 s vs 38 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(gram.double())
    finally:
        torch.set_num_threads(threads)


def reduce_dims(features: torch.Tensor, dims: int) -> torch.Tensor:
    """The top ``dims`` principal components when there are more dimensions (raw pixels of big images).

    Exact and without randomness: eigenvectors of the smaller of the D x D and N x N Gram matrices."""
    n, d = features.shape
    if d <= dims:
        return features
    x = features - features.mean(0)
    if d <= n:
        _, vecs = _eigh(x.T @ x)  # eigenvalues ascending
        return x @ vecs[:, -dims:].flip(1).float()
    vals, vecs = _eigh(x @ x.T)
    return (vecs[:, -dims:] * vals[-dims:].clamp_min(0).sqrt()).flip(1).float()  # = x @ (top right vectors)


class RunLogger:
    """Writes a run's TensorBoard events; one writer per process, closed at the end (also on errors)."""

    def __init__(self, log_dir: Path, first_period: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: it pulls in tensorboard (~1 s)

        self.log_dir = Path(log_dir)
        # purge_step: TensorBoard drops events at steps >= first_period left by an earlier process,
        # so a run resumed after a kill shows every period once
        self.writer = SummaryWriter(str(self.log_dir), purge_step=first_period)

    def period(self, step: int, row: dict[str, Any], labels: np.ndarray) -> None:
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.add_histogram("clusters/sizes", np.bincount(labels), step)
        self.writer.flush()  # on disk before the checkpoint, so a kill loses no period that resume skips

    def final(self, step: int, row: dict[str, Any], montage: Image.Image, features: torch.Tensor,
              labels: np.ndarray, truth: np.ndarray | None, images: np.ndarray) -> None:
        self.period(step, row, labels)
        self.writer.add_image("clusters/montage", np.asarray(montage.convert("RGB")), step, dataformats="HWC")
        keep = subsample(len(labels), PROJECTOR_POINTS)
        # The projector colours points only by metadata fields with at most 50 distinct values:
        # cluster and label qualify for usual targets; more clusters are still searchable, not coloured.
        if truth is None:
            metadata: list = [int(labels[i]) for i in keep]
            header = None
        else:
            metadata = [[int(labels[i]), int(truth[i])] for i in keep]
            header = ["cluster", "label"]
        size = min(PROJECTOR_THUMB, max(images.shape[2:]))
        thumbs = np.stack([np.asarray(thumbnail(images[i], size)) for i in keep])  # square RGB, as the sprite needs
        label_img = torch.from_numpy(thumbs).permute(0, 3, 1, 2).float() / 255.0
        mat = reduce_dims(features.detach().float().cpu()[torch.from_numpy(keep)], PROJECTOR_DIMS)
        # a resumed finished run logs the same step again: replace the old files rather than warn on stdout
        shutil.rmtree(self.log_dir / f"{step:05d}" / EMBEDDING_TAG, ignore_errors=True)
        self.writer.add_embedding(mat, metadata=metadata, label_img=label_img, global_step=step,
                                  tag=EMBEDDING_TAG, metadata_header=header)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
