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

import math
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.segmentation import DiceScore
from torchmetrics.utilities import dim_zero_cat


class DefectDice(DiceScore):
    def __init__(self, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(
            num_classes=1,
            include_background=True,
            average="macro",
            aggregation_level="samplewise",
            input_format="one-hot",
            **kwargs,
        )
        self.empty_score = float(empty_score)
        self.add_state("image_index", [], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """``preds`` and ``target``: Nx1xHxW binary (bool or 0/1); probabilities must be thresholded first.
        ``index``: the N images' dataset indices (give them always or never)."""
        for name, tensor in (("preds", preds), ("target", target)):
            if tensor.dtype != torch.bool and bool(((tensor != 0) & (tensor != 1)).any()):
                raise ValueError(
                    f"DefectDice.update: {name} must be binary (bool or 0/1); threshold probabilities first"
                )
        super().update(preds.to(torch.uint8), target.to(torch.uint8))
        if index is not None:
            self.image_index.append(torch.as_tensor(index, device=self.device).reshape(-1).long())

    def per_image(self) -> torch.Tensor:
        """Every image's Dice, from all ranks (in dataset order when indices were given)."""
        synced_already = self._is_synced  # inside compute() the states are gathered already
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=not synced_already, should_unsync=not synced_already
        ):
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
            raise ValueError(
                f"DefectDice: {index.numel()} image indices for {scores.numel()} images; pass `index` with every "
                "update or with none"
            )
        order = torch.argsort(index, stable=True)
        index, scores = index[order], scores[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # a padded duplicate scores the same as its original
        return scores[first]

    def compute(self) -> torch.Tensor:
        scores = self._scores()
        return scores.mean() if scores.numel() else torch.tensor(float("nan"))


#: thresholds stage 2 tries on the validation set (predict uses the best one by default)
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


class ThresholdSweep(Metric):
    """Dice counted as DefectDice counts it, at every threshold of a grid at once, from probabilities.

    Picks the threshold that maximises validation Dice; BCE + Dice training often leaves the
    best cut-off away from 0.5, and the right one is a property of the trained model.
    """

    full_state_update = False

    def __init__(self, thresholds: tuple[float, ...] = THRESHOLD_GRID, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.empty_score = float(empty_score)
        self.add_state("intersections", default=[], dist_reduce_fx="cat")
        self.add_state("totals", default=[], dist_reduce_fx="cat")

    def update(self, probabilities: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """``probabilities``: Nx1xHxW in [0, 1]; ``target``: Nx1xHxW binary; ``valid``: the pixels scored (None:
        all)."""
        grid = torch.tensor(self.thresholds, device=probabilities.device, dtype=torch.float32)
        truth = target.flatten(1) > 0
        predicted = probabilities.flatten(1).float()[:, None, :] > grid[None, :, None]  # N x T x pixels
        if valid is not None:
            keep = valid.flatten(1)
            truth, predicted = truth & keep, predicted & keep[:, None, :]
        self.intersections.append((predicted & truth[:, None, :]).sum(dim=-1))
        self.totals.append(predicted.sum(dim=-1) + truth.sum(dim=-1, keepdim=True))

    def compute(self) -> torch.Tensor:
        """Mean per-image Dice at each threshold of the grid (NaN when nothing was seen)."""
        intersections, totals = _cat(self.intersections).float(), _cat(self.totals).float()
        if not intersections.numel():
            return torch.full((len(self.thresholds),), float("nan"))
        scores = torch.where(
            totals == 0, torch.full_like(totals, self.empty_score), 2.0 * intersections / totals.clamp_min(1)
        )
        return scores.mean(dim=0)

    def best(self, prefer: float = 0.5) -> dict[str, float] | None:
        """The threshold with the highest Dice (ties: the one nearest ``prefer``) and that Dice."""
        curve = self.compute()
        if torch.isnan(curve).all():
            return None
        top = float(curve.max())
        candidates = [i for i, value in enumerate(curve.tolist()) if value >= top - 1e-9]
        index = min(candidates, key=lambda i: abs(self.thresholds[i] - prefer))
        return {"best_threshold": self.thresholds[index], "val_dice_at_best_threshold": round(top, 6)}


class ClassThresholdSweep(Metric):
    """Softmax classes: the mean class Dice (counted as ClassDice counts it) at every defect threshold of a grid.

    A pixel is a defect where 1 - p(background) > t, of its most probable defect class. Argmax alone is t = 0.5 at
    most; a model trained on few labels leaves rare, faint classes below the background there (on magnetic_tile's
    five types, 175 labels: class Dice 0.00 by argmax, 0.10 at t = 0.1), so t is tuned on validation, as the binary
    threshold is, and stored with each checkpoint.
    """

    full_state_update = False

    def __init__(self, num_classes: int, thresholds: tuple[float, ...] = THRESHOLD_GRID, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.add_state("intersections", default=[], dist_reduce_fx="cat")  # N x T x C
        self.add_state("totals", default=[], dist_reduce_fx="cat")  # N x T x C: predicted + true pixels
        self.add_state("support", default=[], dist_reduce_fx="cat")  # N x C: true pixels

    def update(self, probabilities: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> None:
        """``probabilities``: N x (1 + C) x H x W softmax; ``truth``: N x C x H x W bool (ignored pixels False);
        ``valid``: N x 1 x H x W, the pixels scored."""
        grid = torch.tensor(self.thresholds, device=probabilities.device, dtype=torch.float32)
        defect = (1.0 - probabilities[:, 0].float()).flatten(1)
        winner = probabilities[:, 1:].argmax(dim=1).flatten(1)
        above = (defect[:, None, :] > grid[None, :, None]) & valid.flatten(1)[:, None, :]  # N x T x P
        truth = truth.flatten(2)
        intersections, totals = [], []
        for k in range(self.num_classes):
            predicted = above & (winner == k)[:, None, :]
            intersections.append((predicted & truth[:, k][:, None, :]).sum(dim=-1))
            totals.append(predicted.sum(dim=-1) + truth[:, k].sum(dim=-1, keepdim=True))
        self.intersections.append(torch.stack(intersections, dim=-1))
        self.totals.append(torch.stack(totals, dim=-1))
        self.support.append(truth.sum(dim=-1))

    def per_class(self) -> torch.Tensor:
        """T x C: each class's Dice at each threshold (mean over the images with it in truth or prediction)."""
        intersections, totals = _cat(self.intersections).float(), _cat(self.totals).float()
        if not intersections.numel():
            return torch.full((len(self.thresholds), self.num_classes), float("nan"))
        scores = torch.where(totals > 0, 2.0 * intersections / totals.clamp_min(1), torch.full_like(totals, math.nan))
        return _nanmean(scores, dim=0)

    def compute(self) -> torch.Tensor:
        """T: the mean class Dice over the classes present in the truth, at each threshold."""
        per_class = self.per_class()
        support = _cat(self.support)
        present = support.sum(dim=0) > 0 if support.numel() else torch.zeros(self.num_classes, dtype=torch.bool)
        if not bool(present.any()):
            return torch.full((len(self.thresholds),), float("nan"))
        return per_class[:, present].mean(dim=1)

    def best(self, prefer: float = 0.5) -> dict[str, Any] | None:
        """The threshold with the highest mean class Dice (ties: nearest ``prefer``), that Dice and each class's."""
        curve = self.compute()
        if torch.isnan(curve).all():
            return None
        top = float(torch.nan_to_num(curve, nan=-1.0).max())
        candidates = [i for i, value in enumerate(curve.tolist()) if value >= top - 1e-9]
        index = min(candidates, key=lambda i: abs(self.thresholds[i] - prefer))
        per_class = [None if math.isnan(v) else round(v, 6) for v in self.per_class()[index].tolist()]
        return {
            "best_threshold": self.thresholds[index],
            "val_dice_at_best_threshold": round(top, 6),
            "val_dice_per_class_at_best_threshold": per_class,
        }


class ClassDice(DiceScore):
    """Dice per declared class (TorchMetrics' DiceScore, one-hot input, no averaging), and their mean.

    Per image and class; a class's Dice is the mean over the images where it is in the truth or in the
    prediction (an image with neither says nothing about it, where the binary Dice's ``empty_score``
    would flood rare classes with 1.0). ``mean over classes present``: over the classes found in the
    truth of the images seen, so a class this split lacks neither counts 0 nor 1.
    """

    def __init__(self, num_classes: int, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(
            num_classes=int(num_classes),
            include_background=True,  # the one-hot input holds only the defect classes
            average="none",
            aggregation_level="samplewise",
            input_format="one-hot",
            **kwargs,
        )
        self.empty_score = float(empty_score)
        self.add_state("image_index", [], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """``preds``, ``target``: NxCxHxW binary, one channel per class (ignored pixels 0 in both)."""
        super().update(preds.to(torch.uint8), target.to(torch.uint8))
        if index is not None:
            self.image_index.append(torch.as_tensor(index, device=self.device).reshape(-1).long())

    def per_image(self) -> torch.Tensor:
        """N x C Dice (NaN where the class is in neither truth nor prediction), in dataset order given indices."""
        synced_already = self._is_synced
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=not synced_already, should_unsync=not synced_already
        ):
            return self._scores()[0]

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        numerator, denominator, support, index = (
            _cat(state) for state in (self.numerator, self.denominator, self.support, self.image_index)
        )
        if not numerator.numel():
            return torch.zeros(0, self.num_classes), torch.zeros(0, self.num_classes)
        numerator, denominator, support = numerator.float(), denominator.float(), support.float()
        scores = torch.where(
            denominator > 0, numerator / denominator.clamp_min(1), torch.full_like(numerator, float("nan"))
        )
        if index.numel():
            if index.numel() != scores.shape[0]:
                raise ValueError(f"ClassDice: {index.numel()} image indices for {scores.shape[0]} images")
            order = torch.argsort(index, stable=True)
            index, scores, support = index[order], scores[order], support[order]
            first = torch.ones_like(index, dtype=torch.bool)
            first[1:] = index[1:] != index[:-1]
            scores, support = scores[first], support[first]
        return scores, support

    def per_class(self) -> torch.Tensor:
        """C Dice values (NaN for a class never in truth or prediction)."""
        scores, _ = self._scores()
        return _nanmean(scores, dim=0) if scores.numel() else torch.full((self.num_classes,), float("nan"))

    def compute(self) -> torch.Tensor:
        """The mean of the per-class Dice over the classes present in the truth (NaN when none is)."""
        scores, support = self._scores()
        if not scores.numel():
            return torch.tensor(float("nan"))
        present = support.sum(dim=0) > 0
        per_class = _nanmean(scores, dim=0)
        return per_class[present].mean() if bool(present.any()) else torch.tensor(float("nan"))

    def image_means(self) -> torch.Tensor:
        """Per image: the mean Dice over the classes it has in truth or prediction (``empty_score`` when none)."""
        scores, _ = self._scores()
        if not scores.numel():
            return torch.zeros(0)
        means = _nanmean(scores, dim=1)
        return torch.where(torch.isnan(means), torch.full_like(means, self.empty_score), means)


def _nanmean(values: torch.Tensor, dim: int) -> torch.Tensor:
    counts = (~torch.isnan(values)).sum(dim=dim)
    sums = torch.nan_to_num(values, nan=0.0).sum(dim=dim)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor (after a DDP sync it is one already)."""
    if isinstance(state, list):
        return dim_zero_cat(state) if state else torch.zeros(0)
    return state
