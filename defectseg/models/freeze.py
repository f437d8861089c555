"""Freeze policies: what stage 2 loads from stage 1 and what it trains.

``scratch``  random init, everything trains (the paper's baseline);
``encoder``  stage-1 encoder loaded and frozen, only decoder + head train (the paper's method);
``none``     stage-1 encoder loaded, everything trains (full fine-tuning);
``partial``  stage-1 encoder loaded, its first ``depth`` levels frozen.

A level is what computes one of the encoder's feature maps (the decoder's skips), shallowest
first: the five double convs of unet_paper; for smp encoders the modules each downsampled
map (stride 2, 4, ... 2**encoder_depth) depends on and no shallower one does. For a ResNet:
1 = stem conv + BN, 2 = max-pool + layer1, 3 = layer2, 4 = layer3, 5 = layer4. Encoders
whose first map has stride 4 (ConvNeXt) have an empty level 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defectseg.models.segmentation import SegmentationModel

MODES = ("scratch", "encoder", "none", "partial")


@dataclass(frozen=True)
class FreezePolicy:
    mode: str = "encoder"
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"freeze.mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "partial" and (self.depth is None or int(self.depth) < 1):
            raise ValueError(
                f"freeze.depth must be a positive number of encoder levels for freeze=partial, got {self.depth!r}"
            )

    @property
    def loads_encoder(self) -> bool:
        return self.mode != "scratch"

    def frozen_levels(self, encoder_depth: int) -> int:
        if self.mode == "encoder":
            return encoder_depth
        if self.mode == "partial":
            if int(self.depth) > encoder_depth:
                raise ValueError(f"freeze.depth={self.depth} exceeds the encoder's {encoder_depth} levels")
            return int(self.depth)
        return 0

    def apply(self, model: SegmentationModel) -> int:
        """Turn gradients off for the frozen encoder levels and keep them in eval mode; returns how many are frozen."""
        encoder = model.encoder
        levels = encoder_levels(encoder)
        count = self.frozen_levels(len(levels))
        for parameter in encoder.parameters():
            parameter.requires_grad_(True)
        frozen = [module for level in levels[:count] for module in level]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if hasattr(encoder, "frozen_levels"):
            encoder.frozen_levels = count
        if count == len(levels):
            # Everything the encoder owns (norms, stems outside the levels) is frozen too.
            for parameter in encoder.parameters():
                parameter.requires_grad_(False)
            frozen = [encoder]
        model.mark_frozen(frozen)
        return count


def encoder_levels(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder's levels, shallowest first, each as the modules that compute it."""
    levels = getattr(encoder, "levels", None)
    if levels is not None:
        return [[level] for level in levels]
    return _levels_by_dependency(encoder)


def _levels_by_dependency(encoder: nn.Module) -> list[list[nn.Module]]:
    """Assign every module with parameters to the shallowest feature map whose autograd graph reaches it.

    Works for any encoder returning a list of feature maps (smp's contract), without a table
    per encoder family; the input itself, which smp returns as the first map, is no level.
    One forward pass on a small probe, no backward.
    """
    parameters = list(encoder.parameters())
    if not parameters:
        raise TypeError(f"{type(encoder).__name__} has no parameters to freeze")
    stride = int(getattr(encoder, "output_stride", 32))
    channels = int(getattr(encoder, "in_channels", getattr(encoder, "_in_channels", 3)))
    probe = torch.rand(1, channels, 2 * stride, 2 * stride, device=parameters[0].device, dtype=parameters[0].dtype)
    modes, wanted = [(module, module.training) for module in encoder.modules()], [p.requires_grad for p in parameters]
    encoder.eval()  # the probe updates no batch-norm statistics
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            maps = [feature for feature in encoder(probe) if feature is not probe]
        level_of: dict[int, int] = {}
        for index, feature in enumerate(maps):
            for leaf in _graph_leaves(feature.grad_fn):  # none for a zero-width placeholder
                level_of.setdefault(leaf, index)
    finally:
        for parameter, flag in zip(parameters, wanted):
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
    levels: list[list[nn.Module]] = [[] for _ in maps]
    for module in encoder.modules():
        own = [level_of.get(id(p)) for p in module.parameters(recurse=False)]
        if own and None not in own:
            levels[max(own)].append(module)
    return levels


def _graph_leaves(grad_fn: object) -> set[int]:
    """ids of the tensors a result's autograd graph accumulates gradients into."""
    leaves: set[int] = set()
    seen: set[object] = set()
    stack = [grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(parent for parent, _ in node.next_functions)
    return leaves
