"""The loop every recipe runs: forward (cluster) and backward (train) passes by period.

    period 0:  features = raw pixels          -> clusterer.forward (initial clusters)
    period p:  features = backbone(images)    -> clusterer.forward (merges / reassignment)
               stop when clusterer.done(...)
               backward: train the backbone on the labels with the loss
    final:     clusterer.finalize on the final features

Every random choice derives from (seed, period), so a run resumed from the checkpoint of
period p continues exactly as the uninterrupted run would. What moves from one period to the
next is a :class:`LoopState`, which is also the checkpoint. How the work is spread over
processes is the engine's ``dist`` (see distributed.py); in one process it changes nothing.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from . import distributed
from .allocator import reuse_freed_memory
from .data import Dataset, load_dataset
from .determinism import deterministic_algorithms
from .errors import JulekitError, RecipeError, TrainingError
from .hookspecs import KINDS, ForwardContext, Graph
from .metrics import contiguous, evaluate, nmi
from .progress import Reporter
from .registry import get_registry
from .rundir import RECIPE, SUMMARY, RunDir, versions
from .tensorboard import TB_DIR

FINAL_PERIOD_NAME = "final"
# train.channels_last=auto: channels-last from this many pixels per channel up. On the 2-core CPUs measured,
# NCHW trains up to 1.3x faster at 16x16, channels-last 1.05-1.6x faster from 32x32 up; at 28x28 the
# machines disagree, and with freed memory reused (allocator.py) channels-last was 1.05-1.19x faster
# (docs/PERFORMANCE.md sections 9 and 10).
CHANNELS_LAST_FROM_PIXELS = 28 * 28
# Eval-mode features on the CPU run at most this many images at a time: each image's features are its own
# (the values do not depend on the batch), and past a few hundred images the activations leave the caches
# (docs/PERFORMANCE.md section 10).
CPU_EVAL_BATCH = 256


def uses_channels_last(setting: bool | str, shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether a batch of ``shape`` (N, C, H, W) runs channels-last under ``train.channels_last``."""
    if len(shape) != 4:
        return False
    if setting == "auto":
        return shape[-2] * shape[-1] >= CHANNELS_LAST_FROM_PIXELS
    return bool(setting)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise JulekitError("device: cuda was requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def period_seed(seed: int, period: int, salt: int) -> int:
    return (seed * 1_000_003 + period * 7919 + salt) % (2**63 - 1)


@dataclass
class Plugins:
    backbone: Any
    affinity: Any
    initializer: Any
    linkage: Any
    clusterer: Any
    loss: Any

    @classmethod
    def from_recipe(cls, recipe: dict) -> "Plugins":
        registry = get_registry()
        made = {}
        for kind in KINDS:
            spec = recipe.get(kind)
            if spec is None:
                made[kind] = None
                continue
            settings = {k: v for k, v in spec.items() if k != "name"}
            made[kind] = registry.get(kind, spec["name"]).create(settings)
        return cls(**made)


@dataclass
class RunResult:
    labels: np.ndarray
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    model: nn.Module | None = None  # the trained backbone (None without one)


@dataclass
class LoopState:
    """What moves from one period to the next: saved after every period, it is the checkpoint."""

    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    labels: np.ndarray | None = None
    period: int = 0  # the next period to run
    step: int = 0  # SGD steps so far: the learning-rate schedule's clock
    started: float = field(default_factory=time.time)  # when the loop would have started, had it never stopped
    rows: list[dict] = field(default_factory=list)  # the metrics of the periods done

    def seconds(self) -> float:
        return time.time() - self.started

    def save(self, run_dir: RunDir) -> None:
        """Checkpoint the period just done (atomically) and move on to the next."""
        checkpoint = {"period": self.period, "step": self.step, "labels": self.labels, "seconds": self.seconds()}
        if self.model is not None:
            checkpoint["model"] = self.model.state_dict()
            checkpoint["optimizer"] = self.optimizer.state_dict()
        run_dir.save_checkpoint(checkpoint)
        self.period += 1

    def restore(self, run_dir: RunDir) -> bool:
        """Continue after the run directory's last checkpoint (False: there is none, start afresh)."""
        checkpoint = run_dir.load_checkpoint()
        if checkpoint is not None:
            self.labels, self.step = checkpoint["labels"], checkpoint["step"]
            self.period = checkpoint["period"] + 1
            self.started = time.time() - checkpoint.get("seconds", 0.0)
            if self.model is not None:
                self.model.load_state_dict(checkpoint["model"])
                self.optimizer.load_state_dict(checkpoint["optimizer"])
        # the rows of checkpointed periods only: later ones (and "final") are computed again
        self.rows = [r for r in run_dir.read_metrics() if isinstance(r.get("period"), int) and r["period"] < self.period]
        return checkpoint is not None


class Experiment:
    """Runs a validated recipe into a run directory."""

    def __init__(self, recipe: dict, run_dir: RunDir, *, data_dir: str | None = None,
                 reporter: Reporter | None = None, recipe_name: str = "run",
                 dist: distributed.SingleProcess | None = None) -> None:
        # under torchrun only rank 0 writes and prints: ``dist`` hands the others silent views
        self.dist = dist or distributed.current()
        self.recipe = recipe
        self.run_dir = self.dist.run_dir(run_dir)
        self.data_dir = data_dir
        self.reporter = self.dist.reporter(reporter or Reporter(quiet=True))
        self.recipe_name = recipe_name
        self.train = recipe["train"]
        self.seed = recipe["seed"]
        self.plugins = Plugins.from_recipe(recipe)
        self.device = self.dist.device(resolve_device(recipe["device"]))
        self.net: nn.Module | None = None  # the model as trained: wrapped for the processes (DDP under torchrun)
        # (periods still to come, seconds the current period took to cluster): the progress bars' ETA,
        # from the clusterer's own schedule where it has one (hookspecs.Clusterer.periods_left)
        self.schedule: tuple[int, float] = (0, 0.0)
        self.periods_left = getattr(self.plugins.clusterer, "periods_left", None)
        self.made_with = versions()  # the code the run starts with (a checkout can move on during a long run)

    # -- set-up -----------------------------------------------------------------------------
    def load_data(self) -> Dataset:
        d = self.recipe["data"]
        return load_dataset(d["name"], data_dir=self.data_dir, subset=d["subset"], seed=d["subset_seed"],
                            resize=d["resize"], channels=d["channels"])

    def target_clusters(self, data: Dataset) -> int:
        target = self.recipe["clusters"]
        if target is None:
            if data.n_classes is None:
                raise RecipeError(
                    f"clusters: {data.source} has no labels, so the recipe must set the number of clusters "
                    "(e.g. --set clusters=10)"
                )
            target = data.n_classes
        if target > data.n:
            raise RecipeError(f"clusters: {target} clusters requested but {data.source} has only {data.n} samples")
        k_s = getattr(self.plugins.affinity, "k_s", None)
        if k_s is not None and k_s >= data.n:
            raise RecipeError(
                f"affinity.k_s: {k_s} neighbours need more than {data.n} samples ({data.source}); lower affinity.k_s"
            )
        return target

    # -- features -------------------------------------------------------------------------------
    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float() / 255.0

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images as the network takes them: floats in [0, 1], in the recipe's memory format."""
        x = images.float() / 255.0
        if uses_channels_last(self.train["channels_last"], x.shape):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def extract(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Features of all images, in order. Under torchrun each batch is split over the ranks and
        gathered back (batch norm in train mode then sees the whole batch, as in one process)."""
        in_train_mode = self.train["feature_mode"] == "train"
        model.train(in_train_mode)
        bs = self.train["feature_batch_size"]
        if not in_train_mode and self.device.type == "cpu":
            bs = min(bs, CPU_EVAL_BATCH)
        out = []
        for i in range(0, len(images), bs):
            batch = images[i:i + bs]
            out.append(self.dist.gather(model(self.network_input(self.dist.local_part(batch))), len(batch)))
        return torch.cat(out)

    @contextmanager
    def out_of_memory_hint(self, period: int, key: str, doing: str) -> Iterator[None]:
        """Turn CUDA's out-of-memory error into one line naming the batch size to lower."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            size = self.train[key]
            smaller = f"train.{key}={max(1, size // 2)}"
            raise TrainingError(
                f"period {period}: CUDA out of memory {doing} at train.{key}={size}; lower it: {smaller} in "
                f"{self.run_dir.file(RECIPE)} and julekit run --resume {self.run_dir.path}, or --set {smaller} "
                "for a new run"
            ) from None

    def features(self, model: nn.Module, images: torch.Tensor, period: int, refresh_bn: bool = False) -> torch.Tensor:
        with self.out_of_memory_hint(period, "feature_batch_size", "computing features"):
            if refresh_bn:
                self.refresh_batch_norm(model, images)
            return self.extract(model, images)

    def final_features(self, model: nn.Module | None, images: torch.Tensor, period: int) -> torch.Tensor:
        """What the final stage clusters: the network's features (batch norm refreshed where the recipe
        says so), or the raw pixels when there is no network."""
        if model is None:
            return self.raw_features(images)
        return self.features(model, images, period, refresh_bn=self.train["final_bn"] == "refresh")

    @torch.no_grad()
    def refresh_batch_norm(self, model: nn.Module, images: torch.Tensor) -> None:
        """Re-estimate the batch-norm running statistics of the final network on every image.

        The training-time running averages mix batches of a network that kept changing; the final
        stage extracts eval-mode features, so it uses the statistics of the final weights instead
        (the Torch code gets them from its last train-mode feature pass). An equal-weight average
        over the feature batches; the weights do not change."""
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        bs = self.train["feature_batch_size"]
        for i in range(0, len(images), bs):
            model(self.network_input(self.dist.local_part(images[i:i + bs])))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def check_finite(self, features: torch.Tensor, period: int) -> None:
        if not torch.isfinite(features).all():
            raise TrainingError(
                f"period {period}: the features contain NaN or Inf (training diverged); "
                "lower train.lr or check the input images"
            )

    def context(self, period: int, target: int) -> ForwardContext:
        affinity = self.plugins.affinity

        def build_graph(features: torch.Tensor, k: int | None = None) -> Graph:
            return affinity.build(features, k)

        def progress(done: int, total: int) -> None:
            self.reporter.advance("merges", done, info=f"{done}/{total}")

        return ForwardContext(period=period, n_target=target, seed=period_seed(self.seed, period, 1),
                              build_graph=build_graph, initializer=self.plugins.initializer,
                              linkage=self.plugins.linkage, progress=progress)

    def forward(self, features: torch.Tensor, labels: np.ndarray | None, period: int, target: int) -> np.ndarray:
        self.check_finite(features, period)
        features = self.plugins.affinity.prepare(features)
        self.reporter.bar("merges", 1, f"period {period} clustering")
        try:
            new = self.plugins.clusterer.forward(features, labels, self.context(period, target))
        finally:
            self.reporter.hide("merges")
        return contiguous(new)

    # -- training ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        t = self.train
        if t["lr_policy"] == "inv":
            return t["lr"] * (1.0 + t["inv_gamma"] * step) ** (-t["inv_power"])
        return t["lr"]

    def train_period(self, model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     labels: np.ndarray, period: int, step: int) -> tuple[int, float]:
        """One period of training. ``model`` may be DDP-wrapped (torchrun): each rank then runs its slice
        of every global batch and the loss sees the gathered global batch (see distributed.py)."""
        t = self.train
        training_started = time.time()
        if self.device.type == "cpu":
            reuse_freed_memory()  # the same values, without a page fault for every new batch's memory
        embedding_dim = self.dist.unwrap(model).embedding_dim
        criterion = self.plugins.loss.criterion(embedding_dim, labels, period_seed(self.seed, period, 2))
        criterion = criterion.to(self.device)
        head_params = [p for p in criterion.parameters() if p.requires_grad]
        head_opt = torch.optim.SGD(head_params, lr=t["lr"], weight_decay=t["weight_decay"]) if head_params else None
        generator = torch.Generator().manual_seed(period_seed(self.seed, period, 3))
        labels_t = torch.as_tensor(labels, device=self.device)
        has_signal = getattr(self.plugins.loss, "batch_has_signal", lambda batch_labels: True)
        total_loss, count = 0.0, 0
        self.reporter.bar("epochs", t["epochs"], f"period {period} training")
        for epoch in range(t["epochs"]):
            model.train()
            order = self.plugins.loss.epoch_order(labels, generator).to(self.device)
            for start in range(0, len(order), t["batch_size"]):
                idx = order[start:start + t["batch_size"]]
                lr = self.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = self.network_input(images[self.dist.local_part(idx)])
                if not has_signal(labels_t[idx]):
                    self.step_without_signal(model, optimizer, head_opt, batch)
                    count += 1
                    step += 1
                    continue
                with self.out_of_memory_hint(period, "batch_size", "while training"):
                    embeddings = model(batch)
                    loss = criterion(self.dist.gather_autograd(embeddings, len(idx)), labels_t[idx])
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"period {period}, epoch {epoch + 1}: the loss became {loss.item()} (training diverged); "
                        f"lower train.lr (now {t['lr']}) and rerun, or lower it in "
                        f"{self.run_dir.file(RECIPE)} and resume with julekit run --resume {self.run_dir.path}"
                    )
                optimizer.zero_grad(set_to_none=True)
                if head_opt is not None:
                    head_opt.zero_grad(set_to_none=True)
                with self.out_of_memory_hint(period, "batch_size", "while training"):
                    loss.backward()
                self.dist.average_grads(head_params)  # the head is outside the wrapped model
                optimizer.step()
                if head_opt is not None:
                    head_opt.step()
                total_loss += float(loss.detach())
                count += 1
                step += 1
            self.reporter.advance("epochs", epoch + 1, info=f"loss {total_loss / max(count, 1):.4f}")
            self.reporter.estimate("periods", seconds_left=self.seconds_left(
                (time.time() - training_started) / (epoch + 1), t["epochs"] - epoch - 1))
        self.reporter.hide("epochs")
        return step, total_loss / max(count, 1)

    @staticmethod
    def step_without_signal(model: nn.Module, optimizer: torch.optim.Optimizer,
                            head_opt: torch.optim.Optimizer | None, batch: torch.Tensor) -> None:
        """The step of a batch whose loss is 0 whatever the network computes (no same-cluster pair for the
        triplet loss): the same update as a full step, for a third of its cost.

        Its gradient is exactly zero, so the optimiser still applies weight decay and momentum (the Torch
        code steps too), and the forward pass still runs, without autograd, so that the batch-norm
        running statistics move exactly as they would; only the backward pass is skipped. A period whose
        clusters hold a few samples each (MNIST-full's first: 11,519 clusters of 70,000 images) has about
        half its batches of this kind."""
        with torch.no_grad():
            model(batch)
        for opt in (optimizer, head_opt):
            if opt is None:
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            opt.step()

    def metrics_row(self, period: int | str, labels: np.ndarray, truth: np.ndarray | None,
                    previous: np.ndarray | None = None) -> dict[str, Any]:
        """Clusters, metrics against the labels, the clusterer's own statistics and the NMI with the
        previous period's labels."""
        row: dict[str, Any] = {"period": period, "clusters": int(labels.max()) + 1, **evaluate(truth, labels)}
        row.update(getattr(self.plugins.clusterer, "last_stats", {}) or {})
        if previous is not None:
            row["nmi_prev"] = nmi(previous, labels)
        return row

    def build_model(self, data: Dataset) -> nn.Module | None:
        """The backbone for the data's input shape, on the run's device (None: cluster raw pixels)."""
        if self.plugins.backbone is None:
            return None
        try:
            model = self.plugins.backbone.build(data.shape).to(self.device)
        except ValueError as exc:
            raise RecipeError(f"backbone: {exc}") from None
        if uses_channels_last(self.train["channels_last"], (1, *data.shape)):
            model = model.to(memory_format=torch.channels_last)
        return self.dist.prepare_model(model, self.device)  # global-batch statistics under torchrun

    # -- the run -------------------------------------------------------------------------------
    def deterministic(self):
        """PyTorch's deterministic kernels while the run computes, as the recipe's ``deterministic`` says."""
        return deterministic_algorithms(self.recipe["deterministic"], self.device)

    def run(self, resume: bool = False) -> RunResult:
        """Set up, resume, then period by period: features → forward → record → backward →
        checkpoint; then the final stage and the outputs."""
        with self.deterministic():
            data, images, target = self.set_up()
            state = self.start(data, resume)
            with self.dist.run_logger(self.run_dir.file(TB_DIR), state.period) as tb:
                self.reporter.bar("periods", self.train["max_periods"], "periods")
                self.reporter.advance("periods", state.period)
                while not self.stops(state, target):
                    started = time.time()
                    features = self.period_features(state, images)
                    previous = state.labels
                    featured = time.time()
                    state.labels = self.dist.on_main(lambda: self.forward(features, previous, state.period, target))
                    clustered = time.time()
                    self.schedule = self.periods_to_come(state, target), clustered - started
                    self.reporter.estimate("periods", total=state.period + 1 + self.schedule[0])
                    row = self.metrics_row(state.period, state.labels, data.labels, previous)
                    if self.trains(state, target):
                        row["lr"] = self.lr_at(state.step)
                        state.step, row["loss"] = self.train_period(self.net, state.optimizer, images,
                                                                    state.labels, state.period, state.step)
                    # where a period's time goes: features, clustering (graph + merges), training
                    row["seconds_features"] = featured - started
                    row["seconds_clustering"] = clustered - featured
                    row["seconds_training"] = time.time() - clustered
                    row["seconds"] = time.time() - started
                    epoch_seconds = row["seconds_training"] / self.train["epochs"] if "loss" in row else 0.0
                    self.record(state, row, tb, left=self.seconds_left(epoch_seconds, 0))
                    state.save(self.run_dir)
                    self.reporter.advance("periods", state.period)
                self.reporter.hide("periods")
                labels, final_row, features = self.final_stage(state.model, images, state.labels, state.period,
                                                               target, data)
                state.rows.append(final_row)
                montage = self.write_final(state.rows, labels, data)
                tb.final(state.period, final_row, montage, features, labels, data.labels, data.images)
            summary = self.summary(data, labels, state.rows, final_row, state.seconds())
            self.run_dir.write_json(SUMMARY, summary)
            self.reporter.table(state.rows, summary)
            self.dist.barrier()  # every process returns once rank 0's run directory is complete
        return RunResult(labels=labels, summary=summary, metrics=state.rows, model=state.model)

    def set_up(self) -> tuple[Dataset, torch.Tensor, int]:
        """The data, its images on the device and the number of clusters to reach."""
        data = self.load_data()
        if data.skipped:
            shown = ", ".join(data.skipped[:5]) + (f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else "")
            self.reporter.warn(f"skipped {len(data.skipped)} unreadable files: {shown}")
        target = self.target_clusters(data)
        torch.manual_seed(self.seed)
        return data, torch.as_tensor(data.images).to(self.device), target

    def start(self, data: Dataset, resume: bool) -> LoopState:
        """The network and its optimiser, as the last checkpoint left them when resuming."""
        model, optimizer = self.build_model(data), None
        if model is not None:
            t = self.train
            optimizer = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                        dampening=t["dampening"], weight_decay=t["weight_decay"])
        state = LoopState(model, optimizer)
        if resume:
            if state.restore(self.run_dir):
                self.reporter.log(f"resuming after period {state.period - 1} ({int(state.labels.max()) + 1} clusters)")
        else:
            self.run_dir.write_recipe(self.recipe)
        self.net = None if model is None else self.dist.wrap(model, self.device)
        return state

    def stops(self, state: LoopState, target: int) -> bool:
        done = state.labels is not None and self.plugins.clusterer.done(state.labels, target)
        return done or state.period >= self.train["max_periods"]

    def trains(self, state: LoopState, target: int) -> bool:
        """Whether the period just clustered trains the network (not once the target is reached)."""
        return (state.model is not None and not self.plugins.clusterer.done(state.labels, target)
                and self.train["epochs"] > 0)

    def periods_to_come(self, state: LoopState, target: int) -> int:
        """Periods the joint loop will still run after the one that produced ``state.labels``: the
        clusterer's own schedule where it has one, else until ``train.max_periods``."""
        cap = self.train["max_periods"] - state.period - 1
        if self.plugins.clusterer.done(state.labels, target):
            return 0
        return max(0, min(cap, cap if self.periods_left is None else self.periods_left(state.labels, target)))

    def seconds_left(self, epoch_seconds: float, epochs_left_now: int) -> float:
        """The run's estimated time left, from this period's cost: ``epochs_left_now`` epochs of the
        period in progress, then every period to come (a clusterer with a schedule ends on one that only
        clusters: it reaches the target) and the final stage, each clustering as this period did."""
        to_come, clustering_seconds = self.schedule
        training = to_come if self.periods_left is None else max(0, to_come - 1)
        if self.plugins.backbone is None or self.train["epochs"] == 0:
            training = 0
        epochs = epochs_left_now + training * self.train["epochs"]
        return epochs * epoch_seconds + (to_come + 1) * clustering_seconds

    def period_features(self, state: LoopState, images: torch.Tensor) -> torch.Tensor:
        """Raw pixels for the first clustering (unless the clusterer asks for the backbone's), then the network's."""
        first = getattr(self.plugins.clusterer, "first_features", "raw")
        if state.model is None or (state.labels is None and first != "backbone"):
            return self.raw_features(images)
        return self.features(state.model, images, state.period)

    def record(self, state: LoopState, row: dict[str, Any], tb: Any, left: float | None = None) -> None:
        """A period's row to the console (with the run's time ``left``), metrics.jsonl and TensorBoard."""
        state.rows.append(row)
        self.reporter.period(row, left)
        self.run_dir.write_metrics(state.rows)
        tb.period(state.period, row, state.labels)

    # -- the final stage and the outputs ------------------------------------------------------
    def final_stage(self, model: nn.Module | None, images: torch.Tensor, labels: np.ndarray | None, period: int,
                    target: int, data: Dataset) -> tuple[np.ndarray, dict[str, Any], torch.Tensor]:
        """The clusterer's final stage on the final features: (labels, the "final" metrics row, features)."""
        t0 = time.time()
        features = self.final_features(model, images, period)
        self.check_finite(features, period)
        final_features = self.plugins.affinity.prepare(features)
        self.reporter.bar("merges", 1, "final stage")
        labels = self.dist.on_main(lambda: contiguous(
            self.plugins.clusterer.finalize(final_features, labels, self.context(period, target))))
        self.reporter.hide("merges")
        if int(labels.max()) + 1 < target:  # e.g. features collapsed to a few points: say so, don't hide it
            self.reporter.warn(f"the final stage found {int(labels.max()) + 1} clusters, fewer than the target "
                               f"{target}: the features may have collapsed (try a lower train.lr)")
        final_row = self.metrics_row(FINAL_PERIOD_NAME, labels, data.labels)
        final_row["seconds"] = time.time() - t0
        self.reporter.period(final_row)
        return labels, final_row, final_features

    def write_final(self, rows: list[dict], labels: np.ndarray, data: Dataset) -> np.ndarray | None:
        """metrics.jsonl, assignments.csv and montage.png of a finished run; returns the montage."""
        self.run_dir.write_metrics(rows)
        self.run_dir.write_assignments(labels, data.paths, data.labels)
        return self.run_dir.write_montage(data.images, labels, data.labels)

    def summary(self, data: Dataset, labels: np.ndarray, rows: list[dict], final_row: dict,
                seconds: float) -> dict[str, Any]:
        summary = {
            **{k: final_row[k] for k in ("nmi", "acc", "ari") if k in final_row},
            "n_clusters": int(labels.max()) + 1,
            "n_samples": data.n,
            "periods": sum(1 for r in rows if r["period"] != FINAL_PERIOD_NAME),
            "seconds": seconds,
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "dataset": data.name,
            "data_source": data.source,
            "recipe_name": self.recipe_name,
            "recipe": self.recipe,
            "versions": self.made_with,
        }
        if data.skipped:
            summary["skipped_files"] = data.skipped
        return summary
