"""Backbone ``jule_cnn``: the paper's per-dataset CNNs, built for any input shape.

Block = conv 5×5 (50 filters) → batch norm → ReLU → max-pool 2×2 (ceil mode);
head = flatten → linear to 160 → L2 normalisation. Per-dataset block counts (paper):
MNIST 2 (pool after the first only), USPS 1, COIL-20/100 4, UMist 3 (padding 2),
CMU-PIE / FRGC / YTF 2.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from jule_kit import hookimpl
from .sobel import Sobel


class JuleCNN(nn.Module):
    def __init__(self, input_shape, blocks: int, pool: list[bool], channels: int, kernel: int, padding: int,
                 embedding_dim: int, init_std: float, bn_init: str, sobel: bool = False) -> None:
        super().__init__()
        c, h, w = input_shape
        self.sobel = Sobel(c) if sobel else None  # fixed, not trained
        if self.sobel is not None:
            c = Sobel.out_channels
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Conv2d(c if i == 0 else channels, channels, kernel, padding=padding),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            if pool[i]:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(2, c, h, w)).flatten(1).shape[1]
        self.fc = nn.Linear(flat, embedding_dim)
        self.embedding_dim = embedding_dim
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and bn_init == "torch7":
                nn.init.uniform_(m.weight, 0.0, 1.0)  # Torch7's BatchNormalization reset
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sobel is not None:
            x = self.sobel(x)
        return F.normalize(self.fc(self.features(x).flatten(1)), dim=1)


class JuleCNNBackbone:
    kind = "backbone"
    name = "jule_cnn"
    summary = "The JULE paper's CNN: blocks of conv5x5(50)+BN+ReLU+maxpool, linear to 160, L2 normalisation"
    settings_help = {
        "blocks": "number of conv blocks (paper: MNIST 2, USPS 1, COIL 4, UMist 3, CMU-PIE/FRGC/YTF 2)",
        "pool": "pool after each block (default: all); MNIST uses [true, false]",
        "channels": "filters per conv layer (paper: 50)",
        "kernel": "conv kernel size (paper: 5)",
        "padding": "conv padding (paper: 0; UMist 2)",
        "embedding_dim": "output dimension (paper: 160)",
        "init_std": "std of the normal initialisation of conv and linear weights (paper: 0.01)",
        "bn_init": "batch-norm scale init: pytorch (ones) or torch7 (uniform 0..1, the Torch code)",
        "sobel": "fixed Sobel input layer (DeepCluster): grey (RGB mean; skipped for 1 channel) then Gx, Gy -> 2 channels",
    }

    def __init__(self, *, blocks: int = 2, pool: list[bool] | None = None, channels: int = 50, kernel: int = 5,
                 padding: int = 0, embedding_dim: int = 160, init_std: float = 0.01,
                 bn_init: Literal["pytorch", "torch7"] = "pytorch", sobel: bool = False) -> None:
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        if pool is not None and len(pool) != blocks:
            raise ValueError(f"pool must have one entry per block ({blocks}), got {pool}")
        self.blocks, self.pool = blocks, pool if pool is not None else [True] * blocks
        self.channels, self.kernel, self.padding = channels, kernel, padding
        self.embedding_dim, self.init_std, self.bn_init = embedding_dim, init_std, bn_init
        self.sobel = sobel

    def build(self, input_shape: tuple[int, int, int]) -> nn.Module:
        try:
            return JuleCNN(input_shape, self.blocks, self.pool, self.channels, self.kernel, self.padding,
                           self.embedding_dim, self.init_std, self.bn_init, self.sobel)
        except RuntimeError as exc:  # the image shrank to nothing
            raise ValueError(
                f"{self.blocks} conv blocks do not fit {input_shape[1]}x{input_shape[2]} images; use fewer blocks"
            ) from exc


@hookimpl
def julekit_register_plugins(register):
    register(JuleCNNBackbone)
