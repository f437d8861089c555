"""Segmentation models as encoder + decoder + head, the split both training stages rely on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from defectseg.models.unet_paper import PaperUNetDecoder, PaperUNetEncoder
from defectseg.utils.errors import ConfigError

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


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation of the encoder's features before the decoder (buffers, no parameters).

    A transferred encoder's deep features drift far from the unit scale the decoder's
    He init assumes (measured on unet_paper after stage 1: std 12.6 at the bottleneck vs
    0.7-1.0 in the first levels), so the decoder trains on badly conditioned inputs. Fixing
    mean and std from the training images at the start of stage 2 (a frozen BatchNorm in
    effect) gives every mode the same starting point, and keeps the paper's parameter counts.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.levels = len(channels)
        for index, width in enumerate(channels):
            self.register_buffer(f"mean_{index}", torch.zeros(1, int(width), 1, 1))
            self.register_buffer(f"inv_std_{index}", torch.ones(1, int(width), 1, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [
            (feature - getattr(self, f"mean_{i}").to(feature.dtype)) * getattr(self, f"inv_std_{i}").to(feature.dtype)
            for i, feature in enumerate(features)
        ]

    @torch.no_grad()
    def calibrate(self, feature_batches: Iterable[Sequence[torch.Tensor]]) -> list[float | None]:
        """Set mean/std per channel from raw (unstandardised) encoder features; dead channels stay at scale 1.

        Returns, per level, the fraction of channels that are constant on these images (a ReLU
        unit that never fires carries nothing to the decoder: a transfer diagnostic).
        """
        sums: list[torch.Tensor | None] = [None] * self.levels
        squares: list[torch.Tensor | None] = [None] * self.levels
        count = [0] * self.levels
        for features in feature_batches:
            for i, feature in enumerate(features):
                if not feature.shape[1]:
                    continue  # smp's zero-width placeholder for encoders without a stride-2 level
                values = feature.detach().float().transpose(0, 1).reshape(feature.shape[1], -1)
                sums[i] = values.sum(dim=1) if sums[i] is None else sums[i] + values.sum(dim=1)
                squares[i] = values.pow(2).sum(dim=1) if squares[i] is None else squares[i] + values.pow(2).sum(dim=1)
                count[i] += values.shape[1]
        if not any(count):
            raise ValueError("feature calibration saw no images")
        silent: list[float | None] = [None] * self.levels
        for i in range(self.levels):
            if not count[i]:
                continue
            mean = sums[i] / count[i]
            std = (squares[i] / count[i] - mean.pow(2)).clamp_min(0).sqrt()
            silent[i] = float((std <= 1e-6).float().mean())
            inv_std = torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.ones_like(std))
            getattr(self, f"mean_{i}").copy_(mean.view(1, -1, 1, 1))
            getattr(self, f"inv_std_{i}").copy_(inv_std.view(1, -1, 1, 1))
        return silent


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head producing one logit map per class; the one wrapper every model shares.

    ``architecture`` is the plain-dict description written next to transferred encoder
    weights, so a stage can refuse an encoder built for another network; ``name`` labels
    runs and reports. The head defaults to a 1x1 conv on the decoder's ``out_channels``;
    smp models bring their own (it may upsample). ``input_multiple``: image sides must be
    multiples of it (the encoder's output stride for decoders that concatenate skips).
    ``encoder_init`` names where the encoder's starting weights came from (None: random).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        num_classes: int = 1,
        architecture: dict | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        segmentation_head: nn.Module | None = None,
        name: str | None = None,
        input_multiple: int = 1,
        encoder_init: str | None = None,
    ) -> None:
        super().__init__()
        self.normalize = InputNormalization(mean, std)
        self.encoder = encoder
        self.feature_scale = FeatureStandardizer(encoder.out_channels)
        self.decoder = decoder
        self.segmentation_head = (
            segmentation_head
            if segmentation_head is not None
            else nn.Conv2d(decoder.out_channels, num_classes, kernel_size=1)
        )
        self.architecture = dict(architecture or {})
        self.name = name or str(self.architecture.get("name"))
        self.input_multiple = int(input_multiple)
        self.encoder_init = encoder_init
        self._frozen_modules: list[nn.Module] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_multiple > 1 and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check_input_size(images)
        features = self.feature_scale(self.encoder(self.normalize(images)))
        return self.segmentation_head(self.decoder(features))

    def _check_input_size(self, images: torch.Tensor) -> None:
        """A clear message instead of a shape error deep inside the decoder."""
        height, width = images.shape[-2:]
        if height % self.input_multiple or width % self.input_multiple:
            raise ConfigError(
                f"{self.name} needs image sides that are multiples of {self.input_multiple}, got {height}x{width}: set "
                "dataset.image_size accordingly"
            )

    @torch.no_grad()
    def calibrate_feature_scale(self, image_batches: Iterable[torch.Tensor]) -> list[float | None]:
        """Standardise the decoder's inputs from a few training batches (floats in [0, 1]); per level, the share of
        silent channels."""
        was_training = self.training
        self.eval()
        silent = self.feature_scale.calibrate(self.encoder(self.normalize(images)) for images in image_batches)
        self.train(was_training)
        return silent

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


def unet_paper(
    in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256, 512), num_classes: int = 1
) -> SegmentationModel:
    """The paper's U-Net: 7,846,657 parameters, 4,712,224 of them in the encoder."""
    channels = tuple(int(c) for c in channels)
    encoder = PaperUNetEncoder(in_channels=in_channels, channels=channels)
    decoder = PaperUNetDecoder(encoder_channels=channels)
    architecture = {"name": "unet_paper", "in_channels": int(in_channels), "channels": list(channels)}
    return SegmentationModel(encoder, decoder, num_classes=num_classes, architecture=architecture)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def relative_weight_change(
    initial: dict[str, torch.Tensor], module: nn.Module | list[nn.Module], prefixes: list[str] | None = None
) -> float:
    """||W - W0|| / ||W0|| over a module's floating-point weights: how far training moved it from where it started.

    Why: an encoder that stage 1 barely moved is its random init with a trained head on top;
    freezing it transfers next to nothing (measured: < 1 % on the quick experiment).
    Several modules (an encoder level) count as one; ``initial`` is then keyed by each module's state-dict names
    behind its prefix (default ``""``: the module's own names).
    """
    modules = module if isinstance(module, list) else [module]
    moved = start = 0.0
    for part, prefix in zip(modules, prefixes or [""] * len(modules)):
        for name, tensor in part.state_dict().items():
            before = initial.get(prefix + name)
            if before is not None and tensor.is_floating_point():
                before = before.to(tensor.device, torch.float32)
                moved += float((tensor.float() - before).pow(2).sum())
                start += float(before.pow(2).sum())
    return (moved / start) ** 0.5 if start else 0.0


def parameter_counts(model: SegmentationModel) -> dict[str, int]:
    """The figures the paper's Table 1 reports, for logs and metrics.json."""
    return {
        "total_params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "encoder_params": count_parameters(model.encoder),
        "decoder_params": count_parameters(model.decoder) + count_parameters(model.segmentation_head),
    }
