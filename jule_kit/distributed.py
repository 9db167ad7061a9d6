"""Several processes under ``torchrun``: the backward pass with DistributedDataParallel.

    torchrun --nproc_per_node=N -m jule_kit.cli run RECIPE ...

Every rank loads the data and builds the model from the same seed. The clustering forward pass
runs on rank 0 only and its labels are broadcast. Each global batch (``train.batch_size``, in the
single-process order) is cut into N contiguous slices, one per rank; the embeddings are gathered
back differentiably, so every rank computes the loss on the whole global batch, and batch norm
uses the statistics of the whole global batch. The parameter gradient is then the single-process
one: the gather's backward sums the N ranks' (identical) loss gradients, N x, and DDP averages
the ranks' parameter gradients, / N. Only rank 0 writes the run directory or prints.

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every helper returns at once and
changes nothing.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import JulekitError
from .progress import Reporter
from .rundir import RunDir

# Rank 0 clusters while the others wait in the broadcast of its labels: on large datasets that
# takes longer than torch's defaults (30 min gloo, 10 min NCCL). A rank that dies is caught by
# torchrun, which stops the others, so no real hang lasts this long.
TIMEOUT = timedelta(hours=6)


class PeerFailed(JulekitError):
    """Rank 0 failed in a step the other ranks waited on; its own error says why."""

    exit_code = 1


# -- the torchrun environment ------------------------------------------------------------------
def launched() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files and prints."""
    return rank() == 0


def active() -> bool:
    """Several processes and their group is up: the collectives below must be called by every rank."""
    return launched() and dist.is_available() and dist.is_initialized()


def init() -> bool:
    """Join the torchrun process group (once); in a single process do nothing and return False.

    CPU tensors go over gloo and, where CUDA is available, CUDA tensors over NCCL: one group
    serves the CPU-side broadcasts (labels, run directory) and the training on the GPUs.
    """
    if not launched():
        return False
    if not dist.is_available():
        raise JulekitError("this PyTorch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
            if dist.is_nccl_available():
                backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (registered to run at exit by :func:`init`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this rank's GPU (LOCAL_RANK) under torchrun."""
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


# -- rank 0's results to every rank --------------------------------------------------------------
def _broadcast_array(value: np.ndarray | None, dtype: torch.dtype) -> np.ndarray | None:
    """Rank 0's 1-d ``value`` on every rank. Rank 0 sends None when it failed: the others raise
    PeerFailed (rank 0 gets None back and raises its own error)."""
    # CPU tensors: they go over gloo whatever the training device
    header = torch.tensor([(-1 if value is None else len(value)) if is_main() else 0])
    dist.broadcast(header, src=0)
    n = int(header.item())
    if n < 0:
        if is_main():
            return None
        raise PeerFailed("rank 0 failed (its error is above); this process stops too")
    # torch.tensor copies: ``value`` may be a read-only buffer
    data = torch.tensor(value, dtype=dtype) if is_main() else torch.empty(n, dtype=dtype)
    dist.broadcast(data, src=0)
    return data.numpy()


def broadcast_labels(labels: np.ndarray | None) -> np.ndarray:
    """Rank 0's labels on every rank: rank 0 passes them, the others pass None.

    A single process gets its own labels back."""
    if not active():
        if labels is None:
            raise ValueError("broadcast_labels: a single process must pass its labels")
        return labels
    if is_main() and labels is None:
        raise ValueError("broadcast_labels: rank 0 must pass its labels")
    return _broadcast_array(np.asarray(labels, dtype=np.int64) if is_main() else None, torch.int64)


def on_main(compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` on rank 0 only, its labels on every rank; if it raises, every rank stops."""
    if not active():
        return compute()
    if not is_main():
        return broadcast_labels(None)
    try:
        labels = compute()
    except BaseException:
        _broadcast_array(None, torch.int64)  # release the waiting ranks, then fail here
        raise
    return broadcast_labels(labels)


# -- the run directory and the console: rank 0's ---------------------------------------------------
class ReadOnlyRunDir(RunDir):
    """Rank 0's run directory as the other ranks see it: they read it (resume), never write it.

    The writes below do nothing on purpose: rank 0 writes the same content."""

    def write_json(self, name: str, data: Any) -> None:
        pass

    def write_metrics(self, rows: list[dict]) -> None:
        pass

    def write_assignments(self, labels: np.ndarray, paths: list[str] | None, truth: np.ndarray | None) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass


def create_run_dir(path: Path, force: bool = False) -> RunDir:
    """``RunDir.create`` on rank 0; the other ranks get a read-only view of rank 0's folder.

    Rank 0's path is used everywhere: a default ``runs/<name>-<time>`` may straddle a second."""
    if not init():
        return RunDir.create(path, force=force)
    if not is_main():
        return ReadOnlyRunDir(Path(bytes(_broadcast_array(None, torch.uint8)).decode()))
    try:
        run_dir = RunDir.create(path, force=force)
    except BaseException:
        _broadcast_array(None, torch.uint8)
        raise
    _broadcast_array(np.frombuffer(str(run_dir.path).encode(), dtype=np.uint8), torch.uint8)
    return run_dir


def rank_view(run_dir: RunDir) -> RunDir:
    """The run directory this rank may use: as is on rank 0, read-only elsewhere."""
    if is_main() or isinstance(run_dir, ReadOnlyRunDir):
        return run_dir
    return ReadOnlyRunDir(run_dir.path)


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


# -- splitting a global batch over the ranks ---------------------------------------------------------
def shares(n: int) -> list[int]:
    """Rows per rank of a global batch of ``n``: contiguous slices differing by at most one."""
    size = world_size()
    return [n // size + (1 if r < n % size else 0) for r in range(size)]


def local_part(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of the rows of a global batch (all of it in a single process)."""
    if not active():
        return x
    sizes = shares(len(x))
    start = sum(sizes[:rank()])
    return x[start:start + sizes[rank()]]


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if len(x) == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def gather_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's :func:`local_part` of a global batch of ``n`` rows, concatenated in rank order
    (= the global batch order). No gradient; the identity in a single process."""
    if not active():
        return x
    sizes = shares(n)
    parts = [x.new_empty((max(sizes), *x.shape[1:])) for _ in sizes]
    dist.all_gather(parts, _padded(x, max(sizes)))  # equal shapes: pad to the largest share
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """all_gather of uneven row slices whose backward sums the gradient over the ranks.

    Every rank's loss reads every rank's rows, so the gradient of this rank's rows is the sum of
    all ranks' loss gradients for them: an all_reduce of the whole gradient, then our slice.
    (torch.distributed.nn.functional.all_gather does the same for even slices, but warns that it
    is deprecated on every call in this torch version.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, n: int) -> torch.Tensor:
        ctx.n = n
        return gather_rows(x, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        sizes = shares(ctx.n)
        start = sum(sizes[:rank()])
        return grad[start:start + sizes[rank()]], None


def gather_rows_autograd(x: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`gather_rows` with a gradient (the sum over the ranks' losses); identity in one process."""
    if not active():
        return x
    return _GatherRows.apply(x, n)


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
    if not active():
        return module
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


# -- gradients -------------------------------------------------------------------------------------------
def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun, else the model itself."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average_grads(params: Iterable[torch.Tensor]) -> None:
    """Average gradients over the ranks (parameters outside DDP, e.g. a loss's classifier head).

    Each rank computed them from the same gathered batch, so they agree already; the average keeps
    the copies identical where kernels are not bitwise deterministic (GPU atomics)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
