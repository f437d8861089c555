"""Stage 1's network: the segmentation encoder with a fully connected classification head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Global average pooling of the deepest features, then FC layers with dropout.

    One logit for a two-class problem (crack / no crack), else one logit per class.
    """

    def __init__(self, in_features: int, num_classes: int = 2, hidden: Sequence[int] = (256, 64), dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        width = in_features
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

    def __init__(self, segmentation_model: nn.Module, num_classes: int = 2, hidden: Sequence[int] = (256, 64), dropout: float = 0.5) -> None:
        super().__init__()
        self.normalize = segmentation_model.normalize
        self.encoder = segmentation_model.encoder
        self.architecture = dict(segmentation_model.architecture)
        self.head = ClassificationHead(self.encoder.out_channels[-1], num_classes, hidden, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.normalize(images))[-1])
