"""Every plugin kind julekit knows, in one place.

A plugin is a class with four class attributes::

    kind = "linkage"             # one of KINDS
    name = "gdl"                 # what recipes write: ``linkage: gdl``
    summary = "one line"         # shown by ``julekit plugins``
    settings_help = {"k": "..."}  # optional, one line per setting

and keyword-only ``__init__`` parameters with type hints and defaults: those are its
settings, validated against the recipe before any work starts.  It implements the
Protocol of its kind below.

Plugins reach julekit through the ``julekit`` entry-point group, exactly like the
built-ins under ``plugins/``: a module in that group defines::

    from jule_kit import hookimpl

    @hookimpl
    def julekit_register_plugins(register):
        register(MyLinkage)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np
import pluggy
import scipy.sparse as sp
import torch
from torch import nn

PROJECT = "julekit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The plugin kinds, in the order a recipe lists them.
KINDS = ("backbone", "affinity", "initializer", "linkage", "clusterer", "loss")


@hookspec
def julekit_register_plugins(register: Callable[[type], None]) -> None:
    """Register plugin classes by calling ``register(cls)`` once per class."""


# ----------------------------------------------------------------------------------------
# Data passed between plugins
# ----------------------------------------------------------------------------------------


@dataclass
class Graph:
    """A directed k-nearest-neighbour sample graph.

    ``indices[i]`` are the K_s nearest neighbours of sample i (itself excluded),
    ``dist2[i]`` their squared L2 distances, and ``weights`` the sparse N×N matrix W
    with ``W[i, indices[i, k]] = exp(-dist2[i, k] / sigma2)``.
    """

    indices: np.ndarray  # (N, K_s) int64
    dist2: np.ndarray  # (N, K_s) float32
    weights: sp.csr_matrix  # (N, N) float64, K_s non-zeros per row
    sigma2: float

    @property
    def n_samples(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


@dataclass
class ForwardContext:
    """What a clusterer may use during the forward pass of one period.

    ``build_graph`` builds the sample graph of ``features`` with the recipe's affinity
    (and lets a clusterer rebuild it with more neighbours when the cluster graph is
    disconnected); ``initializer`` and ``linkage`` are the recipe's instances.
    """

    period: int
    n_target: int
    seed: int
    build_graph: Callable[..., Graph]
    initializer: "Initializer"
    linkage: "Linkage"
    progress: Callable[[int, int], None] | None = None  # (done, total) merges


# ----------------------------------------------------------------------------------------
# The six kinds
# ----------------------------------------------------------------------------------------


@runtime_checkable
class Backbone(Protocol):
    """Builds the network that maps images to embeddings (kind ``backbone``)."""

    def build(self, input_shape: tuple[int, int, int]) -> nn.Module:
        """Return a module mapping float images (B, C, H, W) in [0, 1] to (B, D) embeddings.

        The module exposes ``embedding_dim`` (D).
        """


@runtime_checkable
class Affinity(Protocol):
    """Turns features into a sparse sample graph (kind ``affinity``)."""

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        """Normalise (N, D) features before the graph is built (e.g. L2 rows)."""

    def build(self, features: torch.Tensor, k: int | None = None) -> Graph:
        """Return the graph of prepared (N, D) features; ``k`` overrides K_s."""


@runtime_checkable
class Initializer(Protocol):
    """The first over-clustering (kind ``initializer``)."""

    def initial_labels(self, graph: Graph, features: torch.Tensor, n_target: int, seed: int) -> np.ndarray:
        """Return (N,) int64 labels 0..C-1 with C >= n_target clusters."""


@runtime_checkable
class LinkageState(Protocol):
    """Cluster-to-cluster affinities of one partition, updated in place on merges."""

    def affinities(self, cluster: int) -> Mapping[int, float]:
        """Positive affinities from ``cluster`` to its adjacent clusters (absent = 0)."""

    def merge(self, a: int, b: int) -> tuple[int, Iterable[int]]:
        """Merge clusters a and b; return the merged id and the clusters whose
        affinities changed (the merged one and its neighbours)."""

    def clusters(self) -> Iterable[int]:
        """Ids of the live clusters."""

    def labels(self) -> np.ndarray:
        """(N,) current cluster id of every sample (ids need not be contiguous)."""

    # Optional: ``merge_greedily(steps, k_c, kc_min_clusters, lam, progress) -> int`` runs the
    # ``agglomerative`` clusterer's greedy loop itself (compiled), making exactly the merges that loop
    # would make through ``affinities`` and ``merge``; returns the merges done (gdl's compiled state).


@runtime_checkable
class Linkage(Protocol):
    """Defines cluster-to-cluster affinity on the sample graph (kind ``linkage``)."""

    def init(self, graph: Graph, labels: np.ndarray) -> LinkageState:
        """Build the affinity table of the partition ``labels`` (contiguous ids)."""


@runtime_checkable
class Clusterer(Protocol):
    """The forward step of a period (kind ``clusterer``): new labels from features.

    Three optional attributes (read with ``getattr``, so they are not Protocol members):

    ``first_features: Literal["raw", "backbone"]``
        what the first period clusters: ``"raw"`` pixels (the default when absent, JULE)
        or ``"backbone"``, the untrained network's features (DeepCluster); ``"backbone"``
        falls back to raw pixels when the recipe has no backbone.
    ``last_stats: dict[str, float]``
        figures about the latest ``forward`` / ``finalize`` call (e.g. ``empty_clusters``,
        the empty k-means clusters before they were handled); the engine merges them into
        that period's row of metrics.jsonl.
    ``periods_left(labels, n_target) -> int``
        how many periods the joint loop still runs after the one that produced ``labels``, the
        last of which only clusters (it reaches the target); the progress bars' ETA. Without it
        the engine expects training periods until ``train.max_periods``.
    """

    def forward(self, features: torch.Tensor, labels: np.ndarray | None, ctx: ForwardContext) -> np.ndarray:
        """Return (N,) contiguous int64 labels for this period.

        ``labels`` are the previous period's (None in the first period).
        """

    def done(self, labels: np.ndarray, n_target: int) -> bool:
        """Whether the joint loop is finished after this period's labels."""

    def finalize(self, features: torch.Tensor, labels: np.ndarray, ctx: ForwardContext) -> np.ndarray:
        """The final stage on the final features; return labels with n_target clusters."""


@runtime_checkable
class Loss(Protocol):
    """Trains the backbone from labels during the backward pass (kind ``loss``)."""

    def criterion(self, embedding_dim: int, labels: np.ndarray, seed: int) -> nn.Module:
        """A fresh criterion for this period's ``labels``.

        ``criterion(embeddings, batch_labels)`` returns a scalar loss. Its parameters
        (a classifier head, say) are trained together with the backbone.
        """

    def epoch_order(self, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Sample indices for one epoch of training (a shuffle, or a balanced draw)."""

    # Optional: ``batch_has_signal(batch_labels) -> bool``, False when a batch with these labels gives a
    # zero loss whatever the embeddings; the engine then steps without the backward pass.
