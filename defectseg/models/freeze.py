"""Freeze policies and transfer recipes: what stage 2 loads from stage 1, what trains when, and how fast.

A freeze policy is the state at the start of stage 2:

``scratch``  random init, everything trains (the paper's baseline);
``encoder``  stage-1 encoder loaded and frozen, only decoder + head train (the paper's method);
``none``     stage-1 encoder loaded, everything trains (full fine-tuning);
``partial``  stage-1 encoder loaded, its first ``depth`` levels frozen.

A transfer recipe (conf/transfer/*.yaml) adds the schedule: when frozen levels start to train
(staged fine-tuning, gradual unfreezing from the deepest level), the encoder's learning rate
relative to the decoder's (discriminative rates, optionally decaying per level) and a warm-up.

A level is what computes one of the encoder's feature maps (the decoder's skips), shallowest
first: the five double convs of unet_paper; for smp encoders the modules each downsampled
map (stride 2, 4, ... 2**encoder_depth) depends on and no shallower one does. For a ResNet:
1 = stem conv + BN, 2 = max-pool + layer1, 3 = layer2, 4 = layer3, 5 = layer4. Encoders
whose first map has stride 4 (ConvNeXt) have an empty level 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from defectseg.models.segmentation import SegmentationModel, relative_weight_change
from defectseg.utils.errors import ConfigError

MODES = ("scratch", "encoder", "none", "partial")


@dataclass(frozen=True)
class FreezePolicy:
    mode: str = "encoder"
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"transfer.freeze={self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "partial" and (self.depth is None or int(self.depth) < 1):
            raise ConfigError(
                "transfer.freeze_depth must be a positive number of encoder levels for transfer.freeze=partial, "
                f"got {self.depth!r}"
            )

    @property
    def loads_encoder(self) -> bool:
        return self.mode != "scratch"

    def frozen_levels(self, encoder_depth: int) -> int:
        if self.mode == "encoder":
            return encoder_depth
        if self.mode == "partial":
            if int(self.depth) > encoder_depth:
                raise ConfigError(f"transfer.freeze_depth={self.depth} exceeds the encoder's {encoder_depth} levels")
            return int(self.depth)
        return 0

    def apply(self, model: SegmentationModel) -> int:
        """Turn gradients off for the frozen encoder levels and keep them in eval mode; returns how many are frozen."""
        levels = encoder_levels(model.encoder)
        count = self.frozen_levels(len(levels))
        freeze_levels(model, count, levels)
        return count


def freeze_levels(model: SegmentationModel, count: int, levels: list[list[nn.Module]] | None = None) -> None:
    """Freeze the encoder's ``count`` shallowest levels (eval mode, no gradients) and let the rest train.

    Modules unfrozen here return to the model's own train/eval mode, so a BatchNorm that
    starts training again updates its statistics; all levels frozen freezes everything the
    encoder owns (norms, stems outside the levels) too.
    """
    encoder = model.encoder
    levels = encoder_levels(encoder) if levels is None else levels
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)
    frozen = [module for level in levels[:count] for module in level]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    if hasattr(encoder, "frozen_levels"):
        encoder.frozen_levels = count
    if count == len(levels):
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        frozen = [encoder]
    model.mark_frozen([])
    model.train(model.training)  # unfrozen modules back to the model's mode
    model.mark_frozen(frozen)


@dataclass(frozen=True)
class TransferRecipe:
    """A fine-tuning recipe: the freeze policy at the start, when frozen levels start training, and the learning rates.

    Shares (``unfreeze_at``, ``unfreeze_every``, ``warmup``) are fractions of the run, so one
    recipe means the same on a 16-epoch and a 100-epoch preset; switches happen at epoch starts.
    """

    name: str = "frozen_encoder"
    freeze: str = "encoder"
    freeze_depth: int | None = None
    unfreeze_at: float | None = None  # share of the epochs after which the frozen levels train; None: never
    unfreeze_every: float | None = None  # gradual unfreezing: share of the epochs between two levels, deepest first
    encoder_lr_scale: float = 1.0  # the encoder's learning rate as a fraction of the decoder's
    level_lr_decay: float = 1.0  # per level towards the input: level i of L gets encoder_lr_scale * decay**(L - i)
    warmup: float = 0.0  # share of the optimiser steps over which each group's rate ramps up after it starts training

    def __post_init__(self) -> None:
        FreezePolicy(self.freeze, self.freeze_depth)  # its own checks, naming freeze.*
        for key in ("unfreeze_at", "unfreeze_every", "warmup"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"transfer.{key} is a share of the run between 0 and 1, got {value!r}")
        if self.unfreeze_every is not None and (self.unfreeze_at is None or float(self.unfreeze_every) <= 0):
            raise ConfigError(
                "transfer.unfreeze_every (gradual unfreezing) needs transfer.unfreeze_at and a positive share"
            )
        if self.unfreeze_at is not None and self.freeze not in ("encoder", "partial"):
            raise ConfigError(
                f"transfer.unfreeze_at unfreezes frozen levels, but transfer.freeze={self.freeze} freezes none"
            )
        for key in ("encoder_lr_scale", "level_lr_decay"):
            if not float(getattr(self, key)) > 0:
                raise ConfigError(f"transfer.{key} must be positive, got {getattr(self, key)!r}")

    @classmethod
    def from_config(cls, section: Any) -> TransferRecipe:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in dict(section).items() if key in known})

    @property
    def policy(self) -> FreezePolicy:
        return FreezePolicy(self.freeze, self.freeze_depth)

    @property
    def unfreezes(self) -> bool:
        return self.unfreeze_at is not None

    def unfreeze_epoch(self, max_epochs: int) -> int | None:
        return None if self.unfreeze_at is None else round(float(self.unfreeze_at) * max_epochs)

    def frozen_levels_at(self, epoch: int, max_epochs: int, encoder_depth: int) -> int:
        """How many of the shallowest levels are frozen during ``epoch`` (0-based)."""
        start = self.policy.frozen_levels(encoder_depth)
        switch = self.unfreeze_epoch(max_epochs)
        if switch is None or epoch < switch:
            return start
        if self.unfreeze_every is None:
            return 0
        every = max(1, round(float(self.unfreeze_every) * max_epochs))
        return max(0, start - 1 - (epoch - switch) // every)

    def schedule(self, max_epochs: int, encoder_depth: int) -> list[tuple[int, int]]:
        """(first epoch, frozen levels) at each change: what metrics.json records."""
        changes: list[tuple[int, int]] = []
        for epoch in range(max(1, max_epochs)):
            count = self.frozen_levels_at(epoch, max_epochs, encoder_depth)
            if not changes or changes[-1][1] != count:
                changes.append((epoch, count))
        return changes

    def level_lr_scale(self, level: int | None, encoder_depth: int) -> float:
        """Learning-rate factor of encoder level ``level`` (1 = shallowest; None = encoder parts outside the levels)."""
        decay = 1.0 if level is None else float(self.level_lr_decay) ** (encoder_depth - level)
        return float(self.encoder_lr_scale) * decay


def parameter_groups(model: SegmentationModel, recipe: TransferRecipe, lr: float) -> list[dict[str, Any]]:
    """Optimiser groups: the decoder + head at ``lr``, then one group per encoder level at its recipe rate.

    Each group carries ``name``, ``level`` and ``base_lr`` (its rate before warm-up and freezing),
    which the schedule callback reads. A recipe that never unfreezes leaves frozen parameters out
    (no optimiser state, no work); one that will unfreeze keeps them in, with no gradient until then.
    """
    levels = encoder_levels(model.encoder)
    depth = len(levels)
    keep = (lambda p: True) if recipe.unfreezes else (lambda p: p.requires_grad)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    taken: set[int] = set()
    groups: list[dict[str, Any]] = []

    def add(name: str, level: int | None, parameters: Any, rate: float) -> None:
        chosen = [p for p in parameters if id(p) not in taken and keep(p)]
        taken.update(id(p) for p in chosen)
        if chosen:
            groups.append({"params": chosen, "name": name, "level": level, "lr": rate, "base_lr": rate})

    add("decoder", None, (p for p in model.parameters() if id(p) not in encoder_ids), lr)
    for index, level in enumerate(levels, start=1):
        rate = lr * recipe.level_lr_scale(index, depth)
        add(f"encoder_level_{index}", index, (p for module in level for p in module.parameters()), rate)
    add("encoder_other", 0, model.encoder.parameters(), lr * recipe.level_lr_scale(None, depth))
    return groups


def encoder_levels(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder's levels, shallowest first, each as the modules that compute it."""
    levels = getattr(encoder, "levels", None)
    if levels is not None:
        return [[level] for level in levels]
    return _levels_by_dependency(encoder)


def level_weight_changes(encoder: nn.Module, initial: dict[str, torch.Tensor]) -> list[float]:
    """``relative_weight_change`` of each encoder level, shallowest first, from ``initial`` (the encoder's state dict
    when stage 2 began).

    Why: it shows which levels stage 2 rewrote. Pretrained levels a recipe moves as far as scratch moves its random
    ones carried little the target could use; levels that barely move kept stage 1's features.
    """
    prefix = {id(module): f"{name}." if name else "" for name, module in encoder.named_modules()}
    return [
        relative_weight_change(initial, level, [prefix[id(module)] for module in level])
        for level in encoder_levels(encoder)
    ]


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
