"""DeepCluster's fixed Sobel input layer (Caron et al., ECCV 2018, ``--sobel``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Sobel(nn.Module):
    """Grey conversion (mean of RGB; skipped for one channel) then Sobel Gx and Gy, padding 1.

    Maps (B, C, H, W) with C in {1, 3} to (B, 2, H, W). The filters are buffers, not
    parameters: they are never trained and follow the module across devices.
    """

    out_channels = 2

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"Sobel expects 1 or 3 input channels, got {in_channels}")
        self.in_channels = in_channels
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("grey", torch.full((1, in_channels, 1, 1), 1.0 / in_channels))
        self.register_buffer("weight", torch.stack([gx, gx.T])[:, None])  # (2, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 3:
            x = F.conv2d(x, self.grey)
        return F.conv2d(x, self.weight, padding=1)
