"""julekit: JULE, its ablations and DeepCluster-style reassignment as plugins and recipes."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .hookspecs import KINDS, hookimpl

try:
    __version__ = version("julekit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["KINDS", "hookimpl", "__version__"]
