"""Bit-for-bit repeatable runs (recipe key ``deterministic``, on by default).

On the CPU the one source of run-to-run difference is the backward pass of advanced
indexing (``distances[anchor, positive]`` in the triplet loss, any loss that gathers with repeats):
PyTorch accumulates it with a parallel ``index_put_(accumulate=True)`` whose float atomic
adds land in an order that changes from run to run whenever more than one thread runs.
``torch.use_deterministic_algorithms`` switches it (and every other op that has one) to
a sorted, fixed-order kernel. The mode's other effect, filling every new tensor with NaN
(``torch.utils.deterministic.fill_uninitialized_memory``, a debugging aid that changes no result),
is switched off: it cost up to a sixth of a training step at 64x64. Everything else a run
does — faiss kNN, convolutions (oneDNN), matmuls, the merges — already gives the same bits for a
fixed thread count.

On CUDA the same switch is made together with what PyTorch's reproducibility notes
require (``CUBLAS_WORKSPACE_CONFIG``, deterministic cuDNN without autotuning); ops that
have no deterministic CUDA kernel then warn instead of failing the run.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Run the body with PyTorch's deterministic kernels (``enabled``), restoring the previous mode."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                torch.utils.deterministic.fill_uninitialized_memory)
    if enabled:
        if device.type == "cuda":
            # read by cuBLAS when its handle is created; an explicit user setting wins
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
        torch.utils.deterministic.fill_uninitialized_memory = previous[4]
