"""Dice as the paper uses it, on TorchMetrics' DiceScore.

Aggregation: per image, then averaged over images (``samplewise``), so a large defect
does not drown a small one. An image whose true mask and prediction are both empty
scores ``empty_score`` (1.0: "no defect" correctly found) where DiceScore would give NaN
and silently drop it; an empty truth with a non-empty prediction scores 0.
"""

from __future__ import annotations

import torch
from torchmetrics.segmentation import DiceScore
from torchmetrics.utilities import dim_zero_cat


class DefectDice(DiceScore):
    def __init__(self, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes=1, include_background=True, average="macro", aggregation_level="samplewise", input_format="one-hot", **kwargs)
        self.empty_score = float(empty_score)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: Nx1xHxW binary (bool or 0/1); probabilities must be thresholded first."""
        for name, tensor in (("preds", preds), ("target", target)):
            if tensor.dtype != torch.bool and bool(((tensor != 0) & (tensor != 1)).any()):
                raise ValueError(f"DefectDice.update: {name} must be binary (bool or 0/1); threshold probabilities first")
        super().update(preds.to(torch.uint8), target.to(torch.uint8))

    def per_image(self) -> torch.Tensor:
        if not self.numerator:
            return torch.zeros(0)
        numerator = dim_zero_cat(self.numerator).float().sum(dim=-1)
        denominator = dim_zero_cat(self.denominator).float().sum(dim=-1)
        scores = numerator / denominator.clamp_min(1)
        return torch.where(denominator == 0, torch.full_like(scores, self.empty_score), scores)

    def compute(self) -> torch.Tensor:
        scores = self.per_image()
        return scores.mean() if scores.numel() else torch.tensor(float("nan"))
