"""The classic U-Net used in the paper, split smp-style into encoder / decoder / head.

The paper's two "trainable parameters" figures pin the architecture down exactly:
7,846,657 in total and 3,134,433 once the encoder (4,712,224) is frozen. That is the
32-64-128-256-512 U-Net with two biased 3x3 conv + ReLU per level, no batch norm,
2x2 max-pooling and parameter-free 2x upsampling followed by concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


class _UpsampleConcat(torch.autograd.Function):
    """Nearest 2x upsampling of ``low`` concatenated with ``skip`` along channels, written once into one NHWC buffer.

    ``F.interpolate`` + ``torch.cat`` write the upsampled tensor, then read it back for the concatenation; on the
    CPU the nearest-upsampling backward also copies its gradient to another layout (``copy_`` was ~18 % of a
    bf16 training step, most of it there). Here the forward is one write per output element and the backward one
    2x2 sum-pool for ``low`` plus a view for ``skip``: the same values and gradients, less memory traffic.
    """

    @staticmethod
    def forward(ctx: Any, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        n, low_channels, height, width = low.shape
        channels = low_channels + skip.shape[1]
        out = low.new_empty((n, 2 * height, 2 * width, channels), dtype=torch.result_type(low, skip))
        blocks = out.view(n, height, 2, width, 2, channels)
        blocks[..., :low_channels].copy_(low.permute(0, 2, 3, 1)[:, :, None, :, None, :])
        out[..., low_channels:].copy_(skip.permute(0, 2, 3, 1))
        ctx.low_channels, ctx.dtypes = low_channels, (low.dtype, skip.dtype)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_channels = ctx.low_channels
        # 2x2 sum-pool: oneDNN-speed on channels_last (a reshape + sum over the 2x2 axes ran 7x slower)
        grad_low = F.avg_pool2d(grad[:, :low_channels], kernel_size=2, divisor_override=1)
        return grad_low.to(ctx.dtypes[0]), grad[:, low_channels:].to(ctx.dtypes[1])


def upsample_concat(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat([F.interpolate(low, size=skip's, mode="nearest"), skip], 1)``; fused for channels_last 2x."""
    exact_2x = skip.shape[-2:] == (2 * low.shape[-2], 2 * low.shape[-1])
    traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if exact_2x and not traced and low.is_contiguous(memory_format=torch.channels_last):
        return _UpsampleConcat.apply(low, skip)
    return torch.cat([F.interpolate(low, size=skip.shape[-2:], mode="nearest"), skip], dim=1)


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
            x = block(upsample_concat(x, skip))
        return x
