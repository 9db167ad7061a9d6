"""Backbone ``timm``: any timm image model as the embedding network.

``backbone: {name: timm, model: resnet18}`` or the shorthand ``backbone: timm:resnet18``.
The model is built with ``timm.create_model(model, pretrained=..., num_classes=0,
in_chans=C)`` (no classifier: its pooled ``num_features`` are the embedding), images
smaller than ``min_size`` are upsampled inside the module, an optional linear layer
projects to ``embedding_dim``, and the output is L2-normalised, as ``jule_cnn``'s.
With ``pretrained: true`` the input is normalised with the weights' mean and std.
"""
from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import nn

from jule_kit import hookimpl


class TimmEmbedding(nn.Module):
    def __init__(self, model: nn.Module, input_shape, min_size: int, embedding_dim: int | None,
                 mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        c, h, w = input_shape
        self.model = model
        scale = min_size / min(h, w)
        self.size = (math.ceil(h * scale), math.ceil(w * scale)) if scale > 1 else None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.mean = self.std = None
        features = int(model.num_features)
        self.proj = nn.Linear(features, embedding_dim) if embedding_dim is not None else None
        self.embedding_dim = embedding_dim if embedding_dim is not None else features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        z = self.model(x)
        if z.dim() > 2:  # models that keep a spatial or token axis despite num_classes=0
            z = z.flatten(2).mean(-1)
        if self.proj is not None:
            z = self.proj(z)
        return F.normalize(z, dim=1)


def _channel_stats(values, channels: int) -> list[float] | None:
    if not values:
        return None
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    return [sum(values) / len(values)] * channels  # timm sums the first conv over RGB for 1-channel input


class TimmBackbone:
    kind = "backbone"
    name = "timm"
    summary = "Any timm model by name (num_classes=0 features), small images upsampled, L2-normalised embedding"
    shorthand_setting = "model"  # backbone: timm:resnet18  ==  backbone: {name: timm, model: resnet18}
    settings_help = {
        "model": "timm model name (timm.list_models()), e.g. resnet18, efficientnet_b0, vit_tiny_patch16_224",
        "pretrained": "load pretrained weights (downloaded by timm; input normalised with their mean/std)",
        "min_size": "upsample images whose smaller side is below this many pixels (bilinear, inside the model)",
        "embedding_dim": "linear projection of the model's features to this size; null = the model's num_features",
    }

    def __init__(self, *, model: str = "resnet18", pretrained: bool = False, min_size: int = 32,
                 embedding_dim: int | None = None) -> None:
        import timm

        if not timm.is_model(model):
            close = difflib.get_close_matches(model, timm.list_models(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown timm model {model!r}{hint} (see timm.list_models())")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1 or null, got {embedding_dim}")
        self.model, self.pretrained, self.min_size, self.embedding_dim = model, pretrained, min_size, embedding_dim

    def build(self, input_shape: tuple[int, int, int]) -> nn.Module:
        import timm

        c = int(input_shape[0])
        try:
            net = timm.create_model(self.model, pretrained=self.pretrained, num_classes=0, in_chans=c)
        except Exception as exc:  # e.g. weights that cannot be downloaded (hub errors of many types)
            raise ValueError(f"timm could not build {self.model!r}: {type(exc).__name__}: {exc}") from None
        mean = std = None
        if self.pretrained:
            cfg = getattr(net, "pretrained_cfg", None) or {}
            mean, std = _channel_stats(cfg.get("mean"), c), _channel_stats(cfg.get("std"), c)
        module = TimmEmbedding(net, input_shape, self.min_size, self.embedding_dim, mean, std)
        try:
            with torch.no_grad():
                module.eval()(torch.zeros(2, *input_shape))
        except RuntimeError as exc:  # e.g. a ViT with a fixed input size
            raise ValueError(
                f"timm model {self.model!r} does not accept {input_shape[1]}x{input_shape[2]} images "
                f"(after upsampling to min_size {self.min_size}): {exc}"
            ) from None
        return module.train()


@hookimpl
def julekit_register_plugins(register):
    register(TimmBackbone)
