"""Stage 2's loss: BCE for per-pixel calibration + soft Dice against the class imbalance of thin defects."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged; ``smooth`` makes an empty-vs-empty image cost ~0."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (probs * target).sum(dim=1)
    total = probs.sum(dim=1) + target.sum(dim=1)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


class BCEDiceLoss(nn.Module):
    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(
                f"loss weights must be non-negative and not both zero (bce_weight={bce_weight}, dice_weight={dice_weight})"
            )
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.bce_weight:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(logits.float(), target.float())
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth)
        return loss
