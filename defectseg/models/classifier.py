"""Stage 1's network: the segmentation encoder with a fully connected classification head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from defectseg.utils.errors import ConfigError


class GlobalPool(nn.Module):
    """``avg``, ``max`` or ``avgmax`` (both, concatenated).

    A crack covers a few percent of a photo: average pooling dilutes it, max pooling keeps
    it, and rewards features that fire *where* the crack is, which is what a segmentation
    decoder later needs from a frozen encoder.
    """

    def __init__(self, mode: str = "avgmax") -> None:
        super().__init__()
        if mode not in ("avg", "max", "avgmax"):
            raise ConfigError(f"head.pooling must be avg, max or avgmax, got {mode!r}")
        self.mode = mode

    @property
    def multiplier(self) -> int:
        return 2 if self.mode == "avgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        if self.mode in ("avg", "avgmax"):
            pooled.append(x.mean(dim=(2, 3)))
        if self.mode in ("max", "avgmax"):
            pooled.append(x.amax(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


class ClassificationHead(nn.Module):
    """Global pooling of the deepest features, then FC layers with dropout.

    One logit for a two-class problem (crack / no crack), else one logit per class.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        hidden: Sequence[int] = (256, 64),
        dropout: float = 0.5,
        pooling: str = "avgmax",
    ) -> None:
        super().__init__()
        pool = GlobalPool(pooling)
        layers: list[nn.Module] = [pool]
        width = in_features * pool.multiplier
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = int(size)
        self.num_logits = 1 if num_classes == 2 else num_classes
        layers.append(nn.Linear(width, self.num_logits))
        self.layers = nn.Sequential(*layers)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.layers(deepest)


class EncoderClassifier(nn.Module):
    """Shares the normalisation and encoder of a SegmentationModel, so stage 1 trains exactly what stage 2 loads."""

    def __init__(
        self,
        segmentation_model: nn.Module,
        num_classes: int = 2,
        hidden: Sequence[int] = (256, 64),
        dropout: float = 0.5,
        pooling: str = "avgmax",
    ) -> None:
        super().__init__()
        self.normalize = segmentation_model.normalize
        self.encoder = segmentation_model.encoder
        self.architecture = dict(segmentation_model.architecture)
        self.head = ClassificationHead(self.encoder.out_channels[-1], num_classes, hidden, dropout, pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.normalize(images))[-1])
