"""The classic U-Net used in the paper, split smp-style into encoder / decoder / head.

The paper's two "trainable parameters" figures pin the architecture down exactly:
7,846,657 in total and 3,134,433 once the encoder (4,712,224) is frozen. That is the
32-64-128-256-512 U-Net with two biased 3x3 conv + ReLU per level, no batch norm,
2x2 max-pooling and parameter-free 2x upsampling followed by concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def input_multiple(channels: Sequence[int]) -> int:
    """Input sides must be divisible by this: one 2x2 pooling between consecutive levels."""
    return 2 ** (len(channels) - 1)


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    block = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.ReLU(inplace=True),
    )
    for module in block:
        if isinstance(module, nn.Conv2d):
            he_normal_(module)
    return block


def he_normal_(conv: nn.Conv2d) -> None:
    """He initialisation, as in the original U-Net: without batch norm, PyTorch's default
    init shrinks the signal through 18 plain conv+ReLU layers and training stalls at chance."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(conv.bias)


class PaperUNetEncoder(nn.Module):
    """Five levels; returns every level's features (the decoder's skips, deepest last).

    ``frozen_levels`` lets a freeze policy run the first k levels without autograd, so a
    frozen encoder keeps no activations for backward and costs only its forward pass.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = tuple(int(c) for c in channels)
        widths = (in_channels, *self.out_channels)
        self.levels = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(len(self.out_channels)))
        self.frozen_levels = 0

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def reduction(self) -> int:
        """Input sides must be divisible by this."""
        return input_multiple(self.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        grad_wanted = torch.is_grad_enabled()
        for index, level in enumerate(self.levels):
            if index > 0:
                x = F.max_pool2d(x, kernel_size=2)
            with torch.set_grad_enabled(grad_wanted and index >= self.frozen_levels):
                x = level(x)
            features.append(x)
        return features


class PaperUNetDecoder(nn.Module):
    """Upsample, concatenate the skip, two 3x3 convs; one block per encoder level but the last."""

    def __init__(self, encoder_channels: Sequence[int] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        encoder_channels = tuple(int(c) for c in encoder_channels)
        blocks = []
        deeper = encoder_channels[-1]
        for skip in reversed(encoder_channels[:-1]):
            blocks.append(double_conv(deeper + skip, skip))
            deeper = skip
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = encoder_channels[0]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x
