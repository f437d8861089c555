"""Dice as the paper uses it, on TorchMetrics' DiceScore.

Aggregation: per image, then averaged over images (``samplewise``), so a large defect
does not drown a small one. An image whose true mask and prediction are both empty
scores ``empty_score`` (1.0: "no defect" correctly found) where DiceScore would give NaN
and silently drop it; an empty truth with a non-empty prediction scores 0.

Under DDP every rank scores its share of the images; ``compute`` and ``per_image``
gather them from all ranks. Given the images' dataset indices, the scores come back in
dataset order with the duplicates a DistributedSampler pads with removed, so the
result is the whole set's Dice, the same as on one device.
"""

from __future__ import annotations

import torch
from torchmetrics.segmentation import DiceScore
from torchmetrics.utilities import dim_zero_cat


class DefectDice(DiceScore):
    def __init__(self, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes=1, include_background=True, average="macro", aggregation_level="samplewise", input_format="one-hot", **kwargs)
        self.empty_score = float(empty_score)
        self.add_state("image_index", [], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """``preds`` and ``target``: Nx1xHxW binary (bool or 0/1); probabilities must be thresholded first.
        ``index``: the N images' dataset indices (give them always or never)."""
        for name, tensor in (("preds", preds), ("target", target)):
            if tensor.dtype != torch.bool and bool(((tensor != 0) & (tensor != 1)).any()):
                raise ValueError(f"DefectDice.update: {name} must be binary (bool or 0/1); threshold probabilities first")
        super().update(preds.to(torch.uint8), target.to(torch.uint8))
        if index is not None:
            self.image_index.append(torch.as_tensor(index, device=self.device).reshape(-1).long())

    def per_image(self) -> torch.Tensor:
        """Every image's Dice, from all ranks (in dataset order when indices were given)."""
        synced_already = self._is_synced  # inside compute() the states are gathered already
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=not synced_already, should_unsync=not synced_already):
            return self._scores()

    def _scores(self) -> torch.Tensor:
        numerator, denominator, index = (_cat(state) for state in (self.numerator, self.denominator, self.image_index))
        if not numerator.numel():
            return torch.zeros(0)
        numerator, denominator = numerator.float().sum(dim=-1), denominator.float().sum(dim=-1)
        scores = numerator / denominator.clamp_min(1)
        scores = torch.where(denominator == 0, torch.full_like(scores, self.empty_score), scores)
        if not index.numel():
            return scores
        if index.numel() != scores.numel():
            raise ValueError(f"DefectDice: {index.numel()} image indices for {scores.numel()} images; pass `index` with every update or with none")
        order = torch.argsort(index, stable=True)
        index, scores = index[order], scores[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # a padded duplicate scores the same as its original
        return scores[first]

    def compute(self) -> torch.Tensor:
        scores = self._scores()
        return scores.mean() if scores.numel() else torch.tensor(float("nan"))


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor (after a DDP sync it is one already)."""
    if isinstance(state, list):
        return dim_zero_cat(state) if state else torch.zeros(0)
    return state
