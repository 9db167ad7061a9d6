"""Write images of a benchmark dataset as a flat folder of PNG files, to try `cluster_folder.yaml`.

    python bench/make_image_folder.py coil100 --classes 8 --per-class 12 --out my_images
    julekit run recipes/cluster_folder.yaml --set data.name=my_images --set clusters=8

The file names carry no class, so the folder is clustered as a user's own unlabelled photos are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jule_kit.data import load_dataset  # noqa: E402
from jule_kit.errors import DataError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset on the data path, e.g. coil100")
    parser.add_argument("--classes", type=int, default=8, help="how many classes to take (seeded random choice)")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out}: exists; choose a new folder")
    try:
        data = load_dataset(args.dataset, data_dir=args.data_dir)
    except DataError as exc:
        parser.error(str(exc))
    if data.labels is None:
        parser.error(f"{args.dataset}: has no labels to pick classes from")
    rng = np.random.default_rng(args.seed)
    classes = rng.choice(np.unique(data.labels), size=args.classes, replace=False)
    picked = np.concatenate([rng.choice(np.flatnonzero(data.labels == c), size=args.per_class, replace=False)
                             for c in classes])
    args.out.mkdir(parents=True)
    for n, i in enumerate(rng.permutation(picked)):  # shuffled, numbered names: nothing gives the class away
        image = data.images[i].transpose(1, 2, 0)
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(args.out / f"img_{n:04d}.png")
    print(f"wrote {len(picked)} images of {args.classes} {args.dataset} classes to {args.out}")


if __name__ == "__main__":
    main()
