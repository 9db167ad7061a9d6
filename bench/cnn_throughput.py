"""The backward pass's speed: JULE's training loop against the best this torch does on this CPU.

    python bench/cnn_throughput.py              # every CNN shape the JULE recipes use
    python bench/cnn_throughput.py --quick      # usps and mnist shapes, a few batches (CI)

For each shape (the recipe's own CNN: usps 16x16, mnist 28x28, faces 32x32, coil 64x64 RGB and
128x128, faces at 112x92), training images per second (forward + weighted triplet loss +
backward + SGD step, batch 100) of

* ``loop``: ``Experiment.train_period`` itself, as a run calls it (real images of the dataset,
  its labels as clusters; uint8 indexing, the loss's triplet sampling, the optimiser, the
  progress reporter, the per-batch loss read-out all included), with ``train.channels_last=true``
  and ``=false`` (contiguous NCHW); the recipes' default, ``auto``, is one of the two by the shape
  (``loop`` is that one);
* the floor candidates, the same network and loss in a bare loop on one ready float batch (drawn
  at random, as the loop's batches are): ``eager`` (contiguous NCHW), ``channels_last`` (the layout
  the loop runs), ``compile`` (torch.compile, inductor); the best of them is the floor.

It prints loop / floor for each layout: how much of what this torch can do on this CPU the loop
gets. Runs under the recipe's deterministic mode.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusterbench import REPO, load_avg, machine_info  # noqa: E402

# (label, recipe, overrides): the recipes' CNNs at the shapes they train on
SHAPES = [
    ("usps 1x16x16", "jule_usps", []),
    ("mnist 1x28x28", "jule_mnist_test", []),
    ("faces 1x32x32", "jule_umist", []),
    ("coil 3x64x64", "jule_coil100", []),
    ("coil 1x128x128", "jule_coil20", []),
    ("faces 1x112x92", "jule_umist", ["data.resize=[112, 92]"]),
]
QUICK = SHAPES[:2]
BATCH = 100


def experiment(recipe_name: str, overrides: list[str], n: int, data_dir: str | None,
               channels_last: bool | None = None):
    from jule_kit.engine import Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    recipe = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml",
                         [*overrides, f"data.subset={n}", "train.epochs=1", "device=cpu",
                          *([] if channels_last is None else [f"train.channels_last={str(channels_last).lower()}"])])
    exp = Experiment(recipe, RunDir(Path(tempfile.mkdtemp())), data_dir=data_dir)
    data = exp.load_data()
    return exp, data


def time_loop(exp, data, repeats: int) -> float:
    """Images/s of Experiment.train_period: one epoch over the subset, best of ``repeats``."""
    torch.manual_seed(0)
    images = torch.as_tensor(data.images)
    model = exp.build_model(data)
    t = exp.train
    optimizer = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                dampening=t["dampening"], weight_decay=t["weight_decay"])
    labels = np.asarray(data.labels)
    exp.train_period(model, optimizer, images[:2 * BATCH], labels[:2 * BATCH], 1, 0)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        exp.train_period(model, optimizer, images, labels, 1, 0)
        best = min(best, time.perf_counter() - started)
    return len(labels) / best


def time_floor(exp, data, variant: str, steps: int, repeats: int) -> float:
    """Images/s of a bare forward + loss + backward + step loop on one ready float batch."""
    torch.manual_seed(0)
    model = exp.build_model(data).train().to(memory_format=torch.contiguous_format)  # NCHW unless the variant says
    # a random batch, as the loop draws them: the datasets are stored class by class, so the first
    # BATCH images are one or two classes, with few or no triplets for the loss
    batch = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))[:BATCH]
    x = torch.as_tensor(data.images)[batch].float() / 255.0
    y = torch.as_tensor(np.asarray(data.labels))[batch]
    criterion = exp.plugins.loss.criterion(model.embedding_dim, np.asarray(data.labels), 0)
    t = exp.train
    optimizer = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                dampening=t["dampening"], weight_decay=t["weight_decay"])
    net = model
    if variant == "channels_last":
        net = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif variant == "compile":
        torch._dynamo.reset()  # each shape compiles afresh, with its static shapes
        net = torch.compile(model, dynamic=False)

    def step() -> None:
        loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up (and, for compile, the compilation)
        step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - started)
    return steps * BATCH / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="usps and mnist shapes, few batches")
    parser.add_argument("--images", type=int, default=None,
                        help="images per loop epoch (default 2000: 20 batches, so a period's fixed costs weigh "
                             "as in a run; quick 200)")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many timings (default 3; quick 1)")
    parser.add_argument("--variants", default="eager,channels_last,compile")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave the C allocator as the process found it (what reusing freed memory gains)")
    args = parser.parse_args()
    if args.system_allocator:
        import jule_kit.engine

        jule_kit.engine.reuse_freed_memory = lambda: False
    else:
        from jule_kit.allocator import reuse_freed_memory

        reuse_freed_memory()  # as the loop does: the floors run with the same allocator
    shapes = QUICK if args.quick else SHAPES
    n = args.images or (200 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    variants = [v for v in args.variants.split(",") if v and not (args.quick and v == "compile")]
    info = machine_info()
    allocator = "the system's" if args.system_allocator else "freed memory reused"
    print(f"CPU {info['cpu']}, {info['cores']} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator: {allocator}; "
          f"load {load_avg()}; {time.strftime('%Y-%m-%d')}", flush=True)
    print("| shape | default layout | loop img/s | loop, channels-last img/s | loop, NCHW img/s | "
          + " | ".join(f"{v} img/s" for v in variants)
          + " | floor | loop / floor | loop, channels-last / floor | loop, NCHW / floor |")
    print("|---|---|---|---|---|" + "---|" * len(variants) + "---|---|---|---|")
    rows = []
    from jule_kit.determinism import deterministic_algorithms
    from jule_kit.engine import uses_channels_last
    from jule_kit.recipe import load_recipe

    for label, recipe_name, overrides in shapes:
        exp, data = experiment(recipe_name, overrides, n, args.data_dir, channels_last=True)
        exp_nchw, _ = experiment(recipe_name, overrides, n, args.data_dir, channels_last=False)
        default = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml", overrides)["train"]["channels_last"]
        default_cl = uses_channels_last(default, (1, *data.shape))
        with deterministic_algorithms(exp.recipe["deterministic"], exp.device):
            loop_cl = time_loop(exp, data, repeats)
            loop_nchw = time_loop(exp_nchw, data, repeats)
            floor = {}
            for v in variants:
                try:
                    floor[v] = time_floor(exp, data, v, max(1, n // BATCH), repeats)
                except Exception as exc:  # torch.compile's inductor can fail on a shape: say so, keep going
                    print(f"{label}: {v} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
                    floor[v] = float("nan")
        best = max((v for v in floor if floor[v] == floor[v]), key=floor.get)
        layout, loop = ("channels-last", loop_cl) if default_cl else ("NCHW", loop_nchw)
        rows.append({"shape": label, "recipe": recipe_name, "overrides": overrides, "default_layout": layout,
                     "loop": loop, "loop_channels_last": loop_cl, "loop_nchw": loop_nchw, "floor": floor,
                     "best": best, "ratio": loop / floor[best], "ratio_channels_last": loop_cl / floor[best],
                     "ratio_nchw": loop_nchw / floor[best]})
        print(f"| {label} | {layout} | {loop:.0f} | {loop_cl:.0f} | {loop_nchw:.0f} | "
              + " | ".join(f"{floor[v]:.0f}" for v in variants)
              + f" | {best} | {loop / floor[best]:.2f} | {loop_cl / floor[best]:.2f} | {loop_nchw / floor[best]:.2f} |",
              flush=True)
    print(f"load at the end {load_avg()}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "command": " ".join(["python", *sys.argv]),
                                         "allocator": allocator,
                                         "rows": rows, "load_end": load_avg()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
