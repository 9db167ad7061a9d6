"""How a run is spread over processes: one object the engine is handed (``Experiment.dist``).

* :class:`SingleProcess`, what most runs are: every method is plain (the gather of a batch is the
  batch itself, the reporter and TensorBoard logger are the real ones, rank 0's work is just done).
* :class:`Torchrun`, several processes started by ``torchrun`` (the backward pass with
  DistributedDataParallel)::

      torchrun --nproc_per_node=N -m jule_kit.cli run RECIPE ...

  Every rank loads the data and builds the model from the same seed. The clustering forward pass
  runs on rank 0 only and its labels are broadcast. Each global batch (``train.batch_size``, in the
  single-process order) is cut into N contiguous slices, one per rank; the embeddings are gathered
  back differentiably, so every rank computes the loss on the whole global batch, and batch norm
  uses the statistics of the whole global batch. The parameter gradient is then the single-process
  one: the gather's backward sums the N ranks' (identical) loss gradients, N x, and DDP averages
  the ranks' parameter gradients, / N. Only rank 0 writes the run directory or prints.

:func:`current` gives the one for this process (torchrun's when ``WORLD_SIZE`` > 1).
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import JulekitError
from .progress import Reporter
from .rundir import RunDir
from .tensorboard import RunLogger

# Rank 0 clusters while the others wait in the broadcast of its labels: on large datasets that
# takes longer than torch's defaults (30 min gloo, 10 min NCCL). A rank that dies is caught by
# torchrun, which stops the others, so no real hang lasts this long.
TIMEOUT = timedelta(hours=6)


class PeerFailed(JulekitError):
    """Rank 0 failed in a step the other ranks waited on; its own error says why."""

    exit_code = 1


def launched() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Several processes and their group is up: collectives must be called by every rank."""
    return launched() and dist.is_available() and dist.is_initialized()


def current() -> "SingleProcess | Torchrun":
    """The distribution of this process: torchrun's (joining its process group) or a single process."""
    return Torchrun() if launched() else SingleProcess()


class SingleProcess:
    """One process does everything: each method is the plain thing (or nothing)."""

    is_main = True

    def device(self, device: torch.device) -> torch.device:
        return device

    def create_run_dir(self, path: Path, force: bool = False) -> RunDir:
        return RunDir.create(path, force=force)

    def run_dir(self, run_dir: RunDir) -> RunDir:
        return run_dir

    def reporter(self, reporter: Reporter) -> Reporter:
        return reporter

    def run_logger(self, log_dir: Path, first_period: int) -> ContextManager:
        return RunLogger(log_dir, first_period=first_period)

    def on_main(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()``'s labels, on every rank."""
        return compute()

    def local_part(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch."""
        return x

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The global batch of ``n`` rows from every process's :meth:`local_part` (no gradient)."""
        return x

    def gather_autograd(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`gather` with a gradient."""
        return x

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as built for this distribution (global-batch batch norm under torchrun)."""
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to train (DistributedDataParallel under torchrun)."""
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average the gradients of parameters outside the wrapped model (a loss's head)."""

    def barrier(self) -> None:
        """Wait for every process."""


class NullRunLogger:
    """The TensorBoard logger of the ranks other than 0: rank 0 alone writes ``tb/``."""

    def period(self, *args: Any) -> None:
        pass

    def final(self, *args: Any) -> None:
        pass

    def __enter__(self) -> "NullRunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class SilentReporter(Reporter):
    """What the ranks other than 0 show: nothing, warnings included (rank 0 shows them once)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)

    def warn(self, message: str) -> None:
        pass


class ReadOnlyRunDir(RunDir):
    """Rank 0's run directory as the other ranks see it: they read it (resume), never write it.

    The writes below do nothing on purpose: rank 0 writes the same content."""

    def write_recipe(self, recipe: dict) -> None:
        pass

    def write_json(self, name: str, data: Any) -> None:
        pass

    def write_montage(self, images: np.ndarray, labels: np.ndarray, truth: np.ndarray | None) -> None:
        return None  # not drawn: rank 0 draws it

    def write_metrics(self, rows: list[dict]) -> None:
        pass

    def write_assignments(self, labels: np.ndarray, paths: list[str] | None, truth: np.ndarray | None) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass


class Torchrun(SingleProcess):
    """A rank of a torchrun launch: joins the process group (once) and does the collectives.

    CPU tensors go over gloo and, where CUDA is available, CUDA tensors over NCCL: one group
    serves the CPU-side broadcasts (labels, run directory) and the training on the GPUs."""

    def __init__(self) -> None:
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        if not dist.is_available():
            raise JulekitError("this PyTorch build has no torch.distributed; run without torchrun")
        if not dist.is_initialized():
            backend = "gloo"
            if torch.cuda.is_available() and self.local_rank < torch.cuda.device_count():
                torch.cuda.set_device(self.local_rank)
                if dist.is_nccl_available():
                    backend = "cpu:gloo,cuda:nccl"
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
            atexit.register(_shutdown)

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` means this rank's GPU (LOCAL_RANK)."""
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # -- rank 0 writes and prints; the others see it ------------------------------------------------
    def create_run_dir(self, path: Path, force: bool = False) -> RunDir:
        """``RunDir.create`` on rank 0; the other ranks get a read-only view of rank 0's folder.

        Rank 0's path is used everywhere: a default ``runs/<name>-<time>`` may straddle a second."""
        if not self.is_main:
            return ReadOnlyRunDir(Path(bytes(self._broadcast_array(None, torch.uint8)).decode()))
        try:
            run_dir = RunDir.create(path, force=force)
        except BaseException:
            self._broadcast_array(None, torch.uint8)
            raise
        self._broadcast_array(np.frombuffer(str(run_dir.path).encode(), dtype=np.uint8), torch.uint8)
        return run_dir

    def run_dir(self, run_dir: RunDir) -> RunDir:
        if self.is_main or isinstance(run_dir, ReadOnlyRunDir):
            return run_dir
        return ReadOnlyRunDir(run_dir.path)

    def reporter(self, reporter: Reporter) -> Reporter:
        return reporter if self.is_main else SilentReporter()

    def run_logger(self, log_dir: Path, first_period: int) -> ContextManager:
        return RunLogger(log_dir, first_period=first_period) if self.is_main else NullRunLogger()

    def _broadcast_array(self, value: np.ndarray | None, dtype: torch.dtype) -> np.ndarray | None:
        """Rank 0's 1-d ``value`` on every rank. Rank 0 sends None when it failed: the others raise
        PeerFailed (rank 0 gets None back and raises its own error)."""
        # CPU tensors: they go over gloo whatever the training device
        header = torch.tensor([(-1 if value is None else len(value)) if self.is_main else 0])
        dist.broadcast(header, src=0)
        n = int(header.item())
        if n < 0:
            if self.is_main:
                return None
            raise PeerFailed("rank 0 failed (its error is above); this process stops too")
        # torch.tensor copies: ``value`` may be a read-only buffer
        data = torch.tensor(value, dtype=dtype) if self.is_main else torch.empty(n, dtype=dtype)
        dist.broadcast(data, src=0)
        return data.numpy()

    def on_main(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()`` on rank 0 only, its labels on every rank; if it raises, every rank stops."""
        if not self.is_main:
            return self._broadcast_array(None, torch.int64)
        try:
            labels = compute()
        except BaseException:
            self._broadcast_array(None, torch.int64)  # release the waiting ranks, then fail here
            raise
        return self._broadcast_array(np.asarray(labels, dtype=np.int64), torch.int64)

    # -- a global batch split over the ranks --------------------------------------------------------
    def shares(self, n: int) -> list[int]:
        """Rows per rank of a global batch of ``n``: contiguous slices differing by at most one."""
        return [n // self.world_size + (1 if r < n % self.world_size else 0) for r in range(self.world_size)]

    def local_part(self, x: torch.Tensor) -> torch.Tensor:
        sizes = self.shares(len(x))
        start = sum(sizes[:self.rank])
        return x[start:start + sizes[self.rank]]

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's :meth:`local_part`, concatenated in rank order (= the global batch order)."""
        sizes = self.shares(n)
        parts = [x.new_empty((max(sizes), *x.shape[1:])) for _ in sizes]
        dist.all_gather(parts, _padded(x, max(sizes)))  # equal shapes: pad to the largest share
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def gather_autograd(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`gather` whose backward sums the gradient over the ranks' losses."""
        return _GatherRows.apply(x, n, self)

    # -- the model ----------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return sync_batch_norm(model, device)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Each rank computed them from the same gathered batch, so they agree already; the average
        keeps the copies identical where kernels are not bitwise deterministic (GPU atomics)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        dist.barrier()


def _shutdown() -> None:
    """Leave the process group (registered to run at exit when the group is joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if len(x) == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


class _GatherRows(torch.autograd.Function):
    """all_gather of uneven row slices whose backward sums the gradient over the ranks.

    Every rank's loss reads every rank's rows, so the gradient of this rank's rows is the sum of
    all ranks' loss gradients for them: an all_reduce of the whole gradient, then our slice.
    (torch.distributed.nn.functional.all_gather does the same for even slices, but warns that it
    is deprecated on every call in this torch version.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, n: int, ranks: Torchrun) -> torch.Tensor:
        ctx.n, ctx.ranks = n, ranks
        return ranks.gather(x, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return ctx.ranks.local_part(grad), None, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of the sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


# -- batch norm over the global batch -----------------------------------------------------------------
class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with the statistics of the global batch, on any device and backend.

    ``nn.SyncBatchNorm`` refuses CPU tensors ("expected input tensor to be on GPU"), so on the
    CPU (gloo) the per-channel sums are all-reduced here, differentiably: mean first, then the
    centred sum of squares (two passes, as the single-process kernel, rather than E[x²] − E[x]²).
    Same parameters and buffers as ``nn.BatchNorm*d``, so checkpoints move freely between a
    single process and torchrun. In eval mode, or in a single process, it is plain batch norm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {input.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        local_count = x.new_full((1,), x.numel() // x.shape[1])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), local_count]))  # one collective: sums and count
        count = float(sums[-1].detach())
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)}")
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / count  # biased, for the normalisation
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # running variance is unbiased, as in torch's batch norm
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
        return y


PLAIN_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace torch's batch-norm layers by ones with global-batch statistics (under torchrun).

    nn.SyncBatchNorm on GPUs, :class:`AllReduceBatchNorm` elsewhere. Only the plain
    ``nn.BatchNorm*d`` classes are swapped: a subclass may do more in ``forward`` (timm's
    BatchNormAct2d applies its activation) and keeps per-rank statistics instead."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else AllReduceBatchNorm
    if type(module) in PLAIN_BATCH_NORM:
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias  # the same Parameters: optimisers stay valid
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, sync_batch_norm(child, device))
    return module
