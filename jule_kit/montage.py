"""A picture of the clusters: one row of sample thumbnails per cluster, largest first."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 6  # pixels around the caption text


def cluster_caption(cluster: int, size: int, majority: int | None = None, purity: float | None = None) -> str:
    """``c3 n=1100 maj=7 91%``: cluster id, size and, with ground truth, its majority class and purity."""
    text = f"c{cluster} n={size}"
    if majority is not None and purity is not None:
        text += f" maj={majority} {purity:.0%}"
    return text


def caption_of(cluster: int, labels: np.ndarray, truth: np.ndarray | None) -> str:
    """The caption of one cluster of a labelling (majority class and purity when ``truth`` is given)."""
    members = np.flatnonzero(labels == cluster)
    if truth is None:
        return cluster_caption(cluster, len(members))
    counts = np.bincount(np.asarray(truth)[members])
    majority = int(counts.argmax())  # ties: the smallest class id
    return cluster_caption(cluster, len(members), majority, counts[majority] / len(members))


def cluster_order(labels: np.ndarray) -> list[int]:
    """Cluster ids by size, largest first; ties by id so the order never depends on sort stability."""
    sizes = np.bincount(labels)
    return sorted((int(c) for c in np.flatnonzero(sizes)), key=lambda c: (-int(sizes[c]), c))


def pick_members(members: np.ndarray, count: int) -> np.ndarray:
    """``count`` members evenly spaced over the cluster (in index order): deterministic and not just its start."""
    if len(members) <= count:
        return members
    return members[np.linspace(0, len(members) - 1, count).round().astype(int)]


def thumbnail(image: np.ndarray, thumb: int) -> Image.Image:
    """A (C, H, W) uint8 image fitted into a thumb x thumb RGB square (aspect kept)."""
    pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).convert("RGB")
    h, w = image.shape[1:]
    scale = thumb / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # tiny images (8x8 digits) stay crisp when enlarged; large ones are smoothed when shrunk
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    pil = pil.resize(size, resample)
    square = Image.new("RGB", (thumb, thumb), "white")
    square.paste(pil, ((thumb - size[0]) // 2, (thumb - size[1]) // 2))
    return square


def make_montage(images: np.ndarray, labels: np.ndarray, truth: np.ndarray | None, max_clusters: int = 30,
                 per_row: int = 12, thumb: int = 32) -> Image.Image:
    """One row per cluster (the ``max_clusters`` largest, largest first): a caption, then up to
    ``per_row`` members. The image is ``rows * thumb`` pixels high."""
    labels = np.asarray(labels).reshape(-1)
    rows = cluster_order(labels)[:max_clusters]
    captions = [caption_of(c, labels, truth) for c in rows]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_w = int(max(measure.textlength(t, font=font) for t in captions)) + 2 * PAD
    canvas = Image.new("RGB", (caption_w + per_row * thumb, len(rows) * thumb), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (c, text) in enumerate(zip(rows, captions)):
        y = r * thumb
        top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
        draw.text((PAD, y + (thumb - bottom - top) // 2), text, fill="black", font=font)  # centred vertically
        for j, i in enumerate(pick_members(np.flatnonzero(labels == c), per_row)):
            canvas.paste(thumbnail(images[i], thumb), (caption_w + j * thumb, y))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
