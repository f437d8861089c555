"""Freeze policies: what stage 2 loads from stage 1 and what it trains.

``scratch``  random init, everything trains (the paper's baseline);
``encoder``  stage-1 encoder loaded and frozen, only decoder + head train (the paper's method);
``none``     stage-1 encoder loaded, everything trains (full fine-tuning);
``partial``  stage-1 encoder loaded, its first ``depth`` levels frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

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
            raise ValueError(f"freeze.depth must be a positive number of encoder levels for freeze=partial, got {self.depth!r}")

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

    def apply(self, model: SegmentationModel) -> None:
        """Turn gradients off for the frozen encoder levels and keep them in eval mode."""
        encoder = model.encoder
        levels = list(_encoder_levels(encoder))
        count = self.frozen_levels(len(levels))
        for parameter in encoder.parameters():
            parameter.requires_grad_(True)
        frozen = levels[:count]
        for level in frozen:
            for parameter in level.parameters():
                parameter.requires_grad_(False)
        if hasattr(encoder, "frozen_levels"):
            encoder.frozen_levels = count
        if count == len(levels):
            # Everything the encoder owns (norms, stems outside the levels) is frozen too.
            for parameter in encoder.parameters():
                parameter.requires_grad_(False)
            frozen = [encoder]
        model.mark_frozen(frozen)


def _encoder_levels(encoder: nn.Module) -> list[nn.Module]:
    levels = getattr(encoder, "levels", None)
    if levels is None:
        raise TypeError(f"{type(encoder).__name__} exposes no `levels`; it cannot be frozen level by level")
    return list(levels)
