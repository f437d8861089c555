"""Stage 2's loss: BCE (or cross-entropy over classes) for per-pixel calibration + soft Dice against the class
imbalance of thin defects. Pixels labelled ``IGNORE`` (255: VOC's void border) count in neither term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from defectseg.utils.errors import ConfigError

IGNORE = 255  # defectseg.data.classes.IGNORE (not imported: the loss must not pull in the data readers)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - soft Dice per image, averaged; ``smooth`` makes an empty-vs-empty image cost ~0."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    if valid is not None:
        keep = valid.flatten(1).float()
        probs, target = probs * keep, target * keep
    intersection = (probs * target).sum(dim=1)
    total = probs.sum(dim=1) + target.sum(dim=1)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


class BCEDiceLoss(nn.Module):
    """Weights: non-negative, not both zero (checked with the config: defectseg/config/schemas.py and rules.py;
    a batch without ignored pixels takes exactly the path it always took)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE
        if bool(valid.all()):
            valid = None
        else:
            target = torch.where(valid, target, torch.zeros_like(target))
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.bce_weight:
            if valid is None:
                bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            else:
                per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
                bce = (per_pixel * valid).sum() / valid.sum().clamp_min(1)
            loss = loss + self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth, valid)
        return loss


def class_targets(target: torch.Tensor, num_classes: int, multilabel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Nx1xHxW label map -> (NxCxHxW {0, 1} per declared class, Nx1xHxW valid pixels)."""
    valid = target != IGNORE
    labels = torch.where(valid, target, torch.zeros_like(target)).long()
    if multilabel:
        bits = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
        return ((labels >> bits) & 1).float(), valid
    classes = torch.arange(1, num_classes + 1, device=target.device).view(1, -1, 1, 1)
    return (labels == classes).float(), valid


class ClassesLoss(nn.Module):
    """Several classes: cross-entropy over background + C (softmax; ``multilabel``: BCE per class) + soft Dice
    per class over the batch, averaged over the defect classes present in it. ``class_weights``: one per class
    (background weighs 1), scaling its cross-entropy (BCE) term; the Dice term weighs the classes alike."""

    def __init__(
        self,
        num_classes: int,
        multilabel: bool = False,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.multilabel = int(num_classes), bool(multilabel)
        self.ce_weight, self.dice_weight, self.smooth = ce_weight, dice_weight, smooth
        weights = torch.ones(self.num_classes)
        if class_weights is not None:
            if len(class_weights) != self.num_classes or any(float(w) < 0 for w in class_weights):
                raise ConfigError(
                    f"task.class_weights needs {self.num_classes} non-negative weights (one per class), "
                    f"got {list(class_weights)}"
                )
            weights = torch.tensor([float(w) for w in class_weights])
        # the softmax's background channel weighs 1
        self.register_buffer(
            "weights", weights if multilabel else torch.cat([torch.ones(1), weights]), persistent=False
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        layers, valid = class_targets(target, self.num_classes, self.multilabel)
        loss = logits.new_zeros(())
        if self.multilabel:
            probabilities = torch.sigmoid(logits)
            if self.ce_weight:
                per_pixel = F.binary_cross_entropy_with_logits(logits, layers, reduction="none")
                per_pixel = per_pixel * self.weights.view(1, -1, 1, 1) * valid
                loss = loss + self.ce_weight * per_pixel.sum() / (valid.sum() * self.num_classes).clamp_min(1)
        else:
            probabilities = logits.softmax(dim=1)[:, 1:]
            if self.ce_weight:
                labels = torch.where(valid, target, torch.full_like(target, IGNORE)).long().squeeze(1)
                ce = F.cross_entropy(logits, labels, weight=self.weights, ignore_index=IGNORE)
                loss = loss + self.ce_weight * (ce if bool(valid.any()) else logits.sum() * 0)
        if self.dice_weight:
            # One Dice per class over the whole batch, averaged over the classes the batch holds (as smp's DiceLoss).
            # Per image, a class absent from it scores best by predicting nothing: with one defect type per photo
            # (magnetic_tile) C - 1 of every C terms pushed each class to zero and the model predicted background only.
            keep = valid.float()
            probabilities, layers = probabilities * keep, layers * keep
            dims = (0, 2, 3)
            intersection = (probabilities * layers).sum(dim=dims)
            truth = layers.sum(dim=dims)
            dice = (2.0 * intersection + self.smooth) / (probabilities.sum(dim=dims) + truth + self.smooth)  # C
            present = (truth > 0).float()
            loss = loss + self.dice_weight * ((1.0 - dice) * present).sum() / present.sum().clamp_min(1)
        return loss


def frequency_weights(pixels: Sequence[int]) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus 2015) among the defect classes, from the train split's pixel
    counts: weight_k = median count / count of class k, within [0.1, 10] so a class of a few pixels cannot
    dominate; a class absent from train weighs 1. Background keeps weight 1 (the Dice term balances it)."""
    counts = [int(p) for p in pixels]
    present = sorted(c for c in counts if c > 0)
    if not present:
        return [1.0] * len(counts)
    median = float(torch.tensor(present, dtype=torch.float64).median())
    return [round(min(10.0, max(0.1, median / c)), 4) if c > 0 else 1.0 for c in counts]
