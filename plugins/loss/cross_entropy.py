"""Loss ``cross_entropy``: DeepCluster's backward pass (Caron et al., ECCV 2018).

Each period gets a fresh linear head (embedding → one output per pseudo-label, weights
N(0, 0.01²), bias 0) trained with the backbone by cross-entropy on the period's labels.
The engine gives the head's parameters their own SGD optimiser every period (lr =
train.lr, train.weight_decay, no momentum), as DeepCluster re-creates its top layer and
its optimiser after every reassignment. The head sees the embedding times ``scale``
(default 10): the JULE CNN's embedding has unit norm, so the head's logits would otherwise
stay near 0.01 and the loss near ln k.

``epoch_order`` is DeepCluster's ``UnifLabelSampler``: ⌊N / non-empty labels⌋ + 1 indices
from every non-empty label (drawn with replacement only when the label has fewer members),
concatenated, shuffled and cut to N, so each pseudo-class is seen about equally often.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jule_kit import hookimpl


class LinearHeadCriterion(nn.Module):
    """``criterion(embeddings, labels)`` = cross-entropy of a linear head's logits."""

    def __init__(self, embedding_dim: int, n_classes: int, init_std: float, scale: float, seed: int) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_dim, n_classes)
        self.scale = scale
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(n_classes, embedding_dim, generator=generator) * init_std)
            self.head.bias.zero_()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(embeddings * self.scale), labels)


def uniform_label_order(labels: np.ndarray, generator: torch.Generator, n: int | None = None,
                        truncate: bool = True) -> torch.Tensor:
    """DeepCluster's ``UnifLabelSampler`` order: ``n`` (default N) indices, labels drawn uniformly.

    ``truncate=False`` returns the whole shuffled draw (⌊n / labels⌋ + 1 per label) before the cut.
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(labels_t) if n is None else n
    present = torch.unique(labels_t)
    if len(present) == 0 or n == 0:
        return torch.zeros(0, dtype=torch.long)
    per_label = n // len(present) + 1
    chunks = []
    for c in present.tolist():
        members = (labels_t == c).nonzero().flatten()
        if len(members) < per_label:  # too few: draw with replacement
            pick = torch.randint(len(members), (per_label,), generator=generator)
        else:
            pick = torch.randperm(len(members), generator=generator)[:per_label]
        chunks.append(members[pick])
    order = torch.cat(chunks)
    order = order[torch.randperm(len(order), generator=generator)]
    return order[:n] if truncate else order


class CrossEntropy:
    kind = "loss"
    name = "cross_entropy"
    summary = "DeepCluster: fresh linear head on the pseudo-labels each period, cross-entropy, uniform sampling over labels"
    settings_help = {
        "init_std": "std of the head's normal weight initialisation (DeepCluster: 0.01)",
        "scale": "multiply the embeddings by this before the head: with a unit-norm embedding (jule_cnn) and "
        "N(0, 0.01) weights, scale 1 leaves the logits ~0.01 and the loss at ln k; 10 trains in one epoch",
        "sampling": "uniform: DeepCluster's UnifLabelSampler (equal draws per pseudo-label); shuffle: a plain permutation",
    }

    def __init__(self, *, init_std: float = 0.01, scale: float = 10.0, sampling: Literal["uniform", "shuffle"] = "uniform") -> None:
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if sampling not in ("uniform", "shuffle"):
            raise ValueError(f"sampling must be uniform or shuffle, got {sampling!r}")
        self.init_std, self.scale, self.sampling = init_std, scale, sampling

    def criterion(self, embedding_dim: int, labels: np.ndarray, seed: int) -> nn.Module:
        n_classes = int(np.max(labels)) + 1
        return LinearHeadCriterion(embedding_dim, n_classes, self.init_std, self.scale, seed)

    def epoch_order(self, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        if self.sampling == "shuffle":
            return torch.randperm(len(labels), generator=generator)
        return uniform_label_order(labels, generator)


@hookimpl
def julekit_register_plugins(register):
    register(CrossEntropy)
