"""Segmentation models as encoder + decoder + head, the split both training stages rely on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from defectseg.models.unet_paper import PaperUNetDecoder, PaperUNetEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNormalization(nn.Module):
    """Normalisation inside the model, so eager, exported and served models agree on inputs in [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> 1x1 head producing one logit map per class.

    ``architecture`` is the plain-dict description written next to transferred encoder
    weights, so a stage can refuse an encoder built for another network.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        num_classes: int = 1,
        architecture: dict | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.normalize = InputNormalization(mean, std)
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = nn.Conv2d(decoder.out_channels, num_classes, kernel_size=1)
        self.architecture = dict(architecture or {})
        self._frozen_modules: list[nn.Module] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(self.normalize(images))
        return self.segmentation_head(self.decoder(features))

    def mark_frozen(self, modules: Sequence[nn.Module]) -> None:
        """Modules that ``train()`` must leave in eval mode (frozen BatchNorm keeps its statistics)."""
        self._frozen_modules = list(modules)
        for module in self._frozen_modules:
            module.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self


def unet_paper(in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256, 512), num_classes: int = 1) -> SegmentationModel:
    """The paper's U-Net: 7,846,657 parameters, 4,712,224 of them in the encoder."""
    channels = tuple(int(c) for c in channels)
    encoder = PaperUNetEncoder(in_channels=in_channels, channels=channels)
    decoder = PaperUNetDecoder(encoder_channels=channels)
    architecture = {"name": "unet_paper", "in_channels": int(in_channels), "channels": list(channels)}
    return SegmentationModel(encoder, decoder, num_classes=num_classes, architecture=architecture)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(model: SegmentationModel) -> dict[str, int]:
    """The figures the paper's Table 1 reports, for logs and metrics.json."""
    return {
        "total_params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "encoder_params": count_parameters(model.encoder),
        "decoder_params": count_parameters(model.decoder) + count_parameters(model.segmentation_head),
    }
