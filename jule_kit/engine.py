"""The loop every recipe runs: forward (cluster) and backward (train) passes by period.

    period 0:  features = raw pixels          -> clusterer.forward (initial clusters)
    period p:  features = backbone(images)    -> clusterer.forward (merges / reassignment)
               stop when clusterer.done(...)
               backward: train the backbone on the labels with the loss
    final:     clusterer.finalize on the final features

Every random choice derives from (seed, period), so a run resumed from the checkpoint of
period p continues exactly as the uninterrupted run would.
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
from .data import Dataset, load_dataset
from .determinism import deterministic_algorithms
from .errors import JulekitError, RecipeError, TrainingError
from .hookspecs import ForwardContext, Graph
from .metrics import contiguous, evaluate, nmi
from .montage import make_montage, png_bytes
from .progress import Reporter
from .recipe import dump
from .registry import get_registry
from .rundir import MONTAGE, RECIPE, SUMMARY, RunDir, atomic_write_bytes, atomic_write_text, versions
from .tensorboard import TB_DIR, RunLogger

FINAL_PERIOD_NAME = "final"


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
        for kind in ("backbone", "affinity", "initializer", "linkage", "clusterer", "loss"):
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


class Experiment:
    """Runs a validated recipe into a run directory."""

    def __init__(self, recipe: dict, run_dir: RunDir, *, data_dir: str | None = None,
                 reporter: Reporter | None = None, recipe_name: str = "run") -> None:
        # under torchrun (see distributed.py) only rank 0 writes and prints; elsewhere this changes nothing
        distributed.init()
        self.main = distributed.is_main()
        self.recipe = recipe
        self.run_dir = distributed.rank_view(run_dir)
        self.data_dir = data_dir
        self.reporter = (reporter or Reporter(quiet=True)) if self.main else distributed.SilentReporter()
        self.recipe_name = recipe_name
        self.train = recipe["train"]
        self.seed = recipe["seed"]
        self.plugins = Plugins.from_recipe(recipe)
        self.device = distributed.local_device(resolve_device(recipe["device"]))

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

    @torch.no_grad()
    def extract(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Features of all images, in order. Under torchrun each batch is split over the ranks and
        gathered back (batch norm in train mode then sees the whole batch, as in one process)."""
        model.train(self.train["feature_mode"] == "train")
        bs = self.train["feature_batch_size"]
        out = []
        for i in range(0, len(images), bs):
            batch = images[i:i + bs]
            out.append(distributed.gather_rows(model(distributed.local_part(batch).float() / 255.0), len(batch)))
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
            model(distributed.local_part(images[i:i + bs]).float() / 255.0)
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
        embedding_dim = distributed.unwrap(model).embedding_dim
        criterion = self.plugins.loss.criterion(embedding_dim, labels, period_seed(self.seed, period, 2))
        criterion = criterion.to(self.device)
        head_params = [p for p in criterion.parameters() if p.requires_grad]
        head_opt = torch.optim.SGD(head_params, lr=t["lr"], weight_decay=t["weight_decay"]) if head_params else None
        generator = torch.Generator().manual_seed(period_seed(self.seed, period, 3))
        labels_t = torch.as_tensor(labels, device=self.device)
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
                with self.out_of_memory_hint(period, "batch_size", "while training"):
                    embeddings = model(images[distributed.local_part(idx)].float() / 255.0)
                    loss = criterion(distributed.gather_rows_autograd(embeddings, len(idx)), labels_t[idx])
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
                distributed.average_grads(head_params)  # the head is outside DDP
                optimizer.step()
                if head_opt is not None:
                    head_opt.step()
                total_loss += float(loss.detach())
                count += 1
                step += 1
            self.reporter.advance("epochs", epoch + 1, info=f"loss {total_loss / max(count, 1):.4f}")
        self.reporter.hide("epochs")
        return step, total_loss / max(count, 1)

    def metrics_row(self, period: int | str, labels: np.ndarray, truth: np.ndarray | None) -> dict[str, Any]:
        """Clusters, metrics against the labels, and the clusterer's own statistics."""
        row: dict[str, Any] = {"period": period, "clusters": int(labels.max()) + 1, **evaluate(truth, labels)}
        row.update(getattr(self.plugins.clusterer, "last_stats", {}) or {})
        return row

    def build_model(self, data: Dataset) -> nn.Module | None:
        """The backbone for the data's input shape, on the run's device (None: cluster raw pixels)."""
        if self.plugins.backbone is None:
            return None
        try:
            model = self.plugins.backbone.build(data.shape).to(self.device)
        except ValueError as exc:
            raise RecipeError(f"backbone: {exc}") from None
        return distributed.sync_batch_norm(model, self.device)  # global-batch statistics under torchrun

    # -- the run -------------------------------------------------------------------------------
    def deterministic(self):
        """PyTorch's deterministic kernels while the run computes, as the recipe's ``deterministic`` says."""
        return deterministic_algorithms(self.recipe["deterministic"], self.device)

    def run(self, resume: bool = False) -> RunResult:
        with self.deterministic():
            return self._run(resume)

    def _run(self, resume: bool) -> RunResult:
        data = self.load_data()
        if data.skipped:
            shown = ", ".join(data.skipped[:5]) + (f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else "")
            self.reporter.warn(f"skipped {len(data.skipped)} unreadable files: {shown}")
        target = self.target_clusters(data)
        torch.manual_seed(self.seed)
        images = torch.as_tensor(data.images).to(self.device)
        model, optimizer = self.build_model(data), None
        if model is not None:
            t = self.train
            optimizer = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                        dampening=t["dampening"], weight_decay=t["weight_decay"])
        labels: np.ndarray | None = None
        rows: list[dict] = []
        period, step, elapsed_before = 0, 0, 0.0
        if resume:
            state = self.run_dir.load_checkpoint()
            if state is not None:
                labels = state["labels"]
                period, step = state["period"] + 1, state["step"]
                elapsed_before = state.get("seconds", 0.0)
                if model is not None:
                    model.load_state_dict(state["model"])
                    optimizer.load_state_dict(state["optimizer"])
                self.reporter.log(f"resuming after period {state['period']} ({int(labels.max()) + 1} clusters)")
            # keep the rows of checkpointed periods only: later ones (and "final") are rewritten
            rows = [r for r in self.run_dir.read_metrics() if isinstance(r.get("period"), int) and r["period"] < period]
        elif self.main:
            atomic_write_text(self.run_dir.file(RECIPE), dump(self.recipe))
        net = None if model is None else distributed.data_parallel(model, self.device)  # = model in one process
        loop_start = time.time() - elapsed_before

        tb = RunLogger(self.run_dir.file(TB_DIR), first_period=period) if self.main else distributed.NullRunLogger()
        with tb:
            self.reporter.bar("periods", self.train["max_periods"], "periods")
            self.reporter.advance("periods", period)
            while True:
                done = labels is not None and self.plugins.clusterer.done(labels, target)
                if done or period >= self.train["max_periods"]:
                    break
                t0 = time.time()
                first = getattr(self.plugins.clusterer, "first_features", "raw")
                if model is None or (labels is None and first != "backbone"):
                    features = self.raw_features(images)
                else:
                    features = self.features(model, images, period)
                previous = labels
                labels = distributed.on_main(lambda: self.forward(features, previous, period, target))
                row = self.metrics_row(period, labels, data.labels)
                if previous is not None:
                    row["nmi_prev"] = nmi(previous, labels)
                if model is not None and not self.plugins.clusterer.done(labels, target) and self.train["epochs"] > 0:
                    row["lr"] = self.lr_at(step)
                    step, row["loss"] = self.train_period(net, optimizer, images, labels, period, step)
                row["seconds"] = time.time() - t0
                rows.append(row)
                self.reporter.period(row)
                self.run_dir.write_metrics(rows)
                tb.period(period, row, labels)
                checkpoint = {"period": period, "step": step, "labels": labels, "seconds": time.time() - loop_start}
                if model is not None:
                    checkpoint["model"] = model.state_dict()
                    checkpoint["optimizer"] = optimizer.state_dict()
                self.run_dir.save_checkpoint(checkpoint)
                period += 1
                self.reporter.advance("periods", period)
            self.reporter.hide("periods")

            labels, final_row, final_features = self.final_stage(model, images, labels, period, target, data)
            rows.append(final_row)
            montage = self.write_final(rows, labels, data)
            if self.main:
                tb.final(period, final_row, montage, final_features, labels, data.labels, data.images)
        summary = self.summary(data, labels, rows, final_row, time.time() - loop_start)
        self.run_dir.write_json(SUMMARY, summary)
        self.reporter.table(rows, summary)
        distributed.barrier()  # every rank returns once rank 0's run directory is complete
        return RunResult(labels=labels, summary=summary, metrics=rows, model=model)

    # -- the final stage and the outputs ------------------------------------------------------
    def final_stage(self, model: nn.Module | None, images: torch.Tensor, labels: np.ndarray | None, period: int,
                    target: int, data: Dataset) -> tuple[np.ndarray, dict[str, Any], torch.Tensor]:
        """The clusterer's final stage on the final features: (labels, the "final" metrics row, features)."""
        t0 = time.time()
        features = self.raw_features(images) if model is None else self.features(
            model, images, period, refresh_bn=self.train["final_bn"] == "refresh")
        self.check_finite(features, period)
        final_features = self.plugins.affinity.prepare(features)
        self.reporter.bar("merges", 1, "final stage")
        labels = distributed.on_main(lambda: contiguous(
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
        if not self.main:
            return None
        montage = make_montage(data.images, labels, data.labels)
        atomic_write_bytes(self.run_dir.file(MONTAGE), png_bytes(montage))
        return montage

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
            "versions": versions(),
        }
        if data.skipped:
            summary["skipped_files"] = data.skipped
        return summary
