"""The C library's allocator, set to keep freed memory while a network trains on the CPU.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every block of 128 KiB and more
with fresh pages from the kernel (``mmap``) and hands freed memory at the top of its heap back, so
a training step, which allocates and frees the same few-MiB activations and gradients every batch,
pays a page fault for every new page it touches: a tenth of a step of the MNIST CNN on two cores
(docs/PERFORMANCE.md, section 10). Raising both thresholds keeps the freed blocks in the process for
the next batch. Only where the memory comes from changes, never a value computed.

The setting is process-wide and stays: up to ``TRIM_THRESHOLD`` of freed memory can stay with the
process after a run, and blocks larger than ``MMAP_THRESHOLD`` (a dataset, a kNN graph) still come
from and go back to the kernel. Other C libraries (musl, macOS, Windows) are left as they are.
"""
from __future__ import annotations

import ctypes
import platform
import sys

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems: anything smaller comes from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept before any goes back to the kernel

# where these settings exist: glibc on Linux
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

_reusing = False


def reuse_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed blocks under 32 MiB for reuse; True where it now does."""
    global _reusing
    if _reusing:
        return True
    if not GLIBC:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both: with only the mmap threshold raised, freed blocks still go back from the heap's top
    _reusing = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _reusing
