"""LightningModules for the two stages. Models come in built (config does the wiring);
these hold the loss, the metrics and the optimiser, nothing architectural."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import AUROC, Accuracy

from defectseg.inference.runtime import TUNED_THRESHOLD_KEY
from defectseg.models.freeze import TransferRecipe, parameter_groups
from defectseg.training.losses import IGNORE, BCEDiceLoss, ClassesLoss, class_targets
from defectseg.training.metrics import ClassDice, ClassThresholdSweep, DefectDice, ThresholdSweep
from defectseg.utils.errors import ConfigError


def images_to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 batches travel to the device; the conversion to [0, 1] floats happens there."""
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def prepare_network(network: nn.Module, channels_last: bool, compile: bool) -> None:
    """The fast path both stages share: NHWC weights, and optionally torch.compile in place (state_dict keys
    unchanged)."""
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if compile:
        network.compile()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Frozen parameters stay out of the optimiser: no state, no work for them."""
    return [p for p in module.parameters() if p.requires_grad]


def adam(module: nn.Module | list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Adam:
    """The paper's Adam over a module's trainable parameters (or given parameter groups), fused into one
    kernel on CPU and CUDA: the default per-tensor update of unet_paper's 7.8M parameters is hundreds
    of small kernels (measured on one CPU thread: 12 ms per step fused, 54-62 ms not)."""
    if isinstance(module, nn.Module):
        groups: list[dict[str, Any]] = [{"params": trainable_parameters(module)}]
    else:
        groups = module
    parameters = [p for group in groups for p in group["params"]]
    fused = bool(parameters) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in parameters
    )
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


class ClassificationTask(L.LightningModule):
    """Stage 1: encoder + FC head learns crack / no-crack (or N classes)."""

    def __init__(
        self,
        network: nn.Module,
        num_classes: int = 2,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"], logger=False)
        self.network = network
        self.binary = num_classes == 2
        metric_args: dict[str, Any] = (
            {"task": "binary"} if self.binary else {"task": "multiclass", "num_classes": num_classes}
        )
        self.val_accuracy, self.test_accuracy = Accuracy(**metric_args), Accuracy(**metric_args)
        self.val_auroc, self.test_auroc = AUROC(**metric_args), AUROC(**metric_args)
        prepare_network(self.network, channels_last, compile)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images_to_float(images, self.hparams.channels_last))

    def _loss_and_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"]).float()
        labels = batch["label"]
        if self.binary:
            logits = logits.squeeze(1)
            return F.binary_cross_entropy_with_logits(logits, labels.float()), torch.sigmoid(logits)
        return F.cross_entropy(logits, labels), logits.softmax(dim=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_scores(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], prefix: str, accuracy: Accuracy, auroc: AUROC) -> None:
        loss, scores = self._loss_and_scores(batch)
        accuracy.update(scores, batch["label"])
        auroc.update(scores, batch["label"])
        size = len(batch["label"])
        self.log(f"{prefix}/loss", loss, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log(f"{prefix}/accuracy", accuracy, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{prefix}/auroc", auroc, on_epoch=True, batch_size=size)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_accuracy, self.val_auroc)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy, self.test_auroc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self, self.hparams.lr, self.hparams.weight_decay)


class SegmentationTask(L.LightningModule):
    """Stage 2: the U-Net (encoder frozen or not by the freeze policy) learns defect masks.

    ``classes`` (names, background implicit) makes it multi-class: softmax over background + C
    (or one sigmoid per class with ``multilabel``), cross-entropy + Dice over classes, Dice per class.
    Without it the binary task is exactly what it always was.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        threshold: float = 0.5,
        empty_score: float = 1.0,
        channels_last: bool = True,
        compile: bool = False,
        preview_images: int = 4,
        classes: list[str] | None = None,
        multilabel: bool = False,
        class_weights: list[float] | None = None,
        transfer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.recipe = TransferRecipe.from_config(transfer or {"name": "full_finetune", "freeze": "none"})
        if classes is None and (multilabel or class_weights is not None):
            raise ConfigError("task.class_weights and dataset.multilabel need dataset.classes")
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        self.classes = None if classes is None else [str(c) for c in classes]
        if self.classes is None:
            self.loss = BCEDiceLoss(bce_weight, dice_weight)
            self.val_dice = DefectDice(empty_score=empty_score)
            self.test_dice = DefectDice(empty_score=empty_score)
            sweeps = 1
        else:
            self.loss = ClassesLoss(len(self.classes), multilabel, bce_weight, dice_weight, class_weights)
            self.val_dice = ClassDice(len(self.classes), empty_score=empty_score)
            self.test_dice = ClassDice(len(self.classes), empty_score=empty_score)
            sweeps = len(self.classes) if multilabel else 1  # softmax: one defect threshold over all classes
        self.test_dice_per_image: list[float] = []
        self.test_dice_per_class: dict[str, float | None] = {}
        self.test_dice_per_image_per_class: dict[str, list[float | None]] = {}
        # Dice over a grid of thresholds (one per class when multilabel): the best on val is stored with each checkpoint
        self.val_threshold_sweeps = nn.ModuleList(self._sweep(empty_score) for _ in range(sweeps))
        self.test_threshold_sweeps = nn.ModuleList(self._sweep(empty_score) for _ in range(sweeps))
        self.tuned_threshold: dict[str, Any] | None = None
        self.test_dice_by_threshold: dict[float, float] = {}
        self.preview: dict[str, torch.Tensor] | None = None
        prepare_network(self.model, channels_last, compile)

    # the binary task's names, kept for its callers
    @property
    def val_threshold_sweep(self) -> ThresholdSweep:
        return self.val_threshold_sweeps[0]

    @property
    def test_threshold_sweep(self) -> ThresholdSweep:
        return self.test_threshold_sweeps[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images_to_float(images, self.hparams.channels_last))

    @property
    def softmax_classes(self) -> bool:
        return self.classes is not None and not self.hparams.multilabel

    def _sweep(self, empty_score: float) -> ThresholdSweep | ClassThresholdSweep:
        if self.softmax_classes:
            return ClassThresholdSweep(len(self.classes))
        return ThresholdSweep(empty_score=empty_score)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], prefix: str, dice: Any, sweeps: nn.ModuleList) -> torch.Tensor:
        """Score one batch; returns the per-pixel defect probability (any class) for previews."""
        logits = self(batch["image"]).float()
        masks = batch["mask"]
        self.log(
            f"{prefix}/loss",
            self.loss(logits, masks),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(masks),
            sync_dist=True,
        )
        if self.classes is None:
            probabilities = torch.sigmoid(logits)
            valid = masks != IGNORE
            if bool(valid.all()):
                dice.update(probabilities > self.hparams.threshold, masks > 0, index=batch.get("index"))
                sweeps[0].update(probabilities, masks)
            else:  # ignored pixels (a void border) count neither as truth nor as prediction
                truth = masks == 1
                dice.update((probabilities > self.hparams.threshold) & valid, truth, index=batch.get("index"))
                sweeps[0].update(probabilities, truth, valid)
            return probabilities
        truth, valid = class_targets(masks, len(self.classes), self.hparams.multilabel)
        truth = truth.bool() & valid
        if self.hparams.multilabel:
            probabilities = torch.sigmoid(logits)
            predicted = (probabilities > self.hparams.threshold) & valid
            for k, sweep in enumerate(sweeps):
                sweep.update(probabilities[:, k : k + 1], truth[:, k : k + 1], valid)
            defect = probabilities.amax(dim=1, keepdim=True)
        else:
            probabilities = logits.softmax(dim=1)
            sweeps[0].update(probabilities, truth, valid)
            defect = 1.0 - probabilities[:, :1]
            if prefix == "val":
                return defect  # validation's Dice is the sweep's, at the threshold tuned on it
            # test: at the defect threshold tuned on validation (restored with the best checkpoint), as predict decodes
            tuned = (self.tuned_threshold or {}).get("best_threshold")
            if tuned is None:
                winner = probabilities.argmax(dim=1, keepdim=True)
            else:
                winner = torch.where(defect > float(tuned), probabilities[:, 1:].argmax(dim=1, keepdim=True) + 1, 0)
            labels = torch.arange(1, len(self.classes) + 1, device=logits.device).view(1, -1, 1, 1)
            predicted = (winner == labels) & valid
        dice.update(predicted, truth, index=batch.get("index"))
        return defect

    def _preview_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """The truth as defect / background, for the preview grid (ignored pixels as background)."""
        return (masks == 1 if self.classes is None else (masks > 0) & (masks != IGNORE)).to(torch.uint8)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        probabilities = self._evaluate(batch, "val", self.val_dice, self.val_threshold_sweeps)
        if batch_idx == 0 and self.hparams.preview_images:
            k = self.hparams.preview_images
            self.preview = {
                "image": batch["image"][:k].detach(),
                "mask": self._preview_mask(batch["mask"][:k].detach()),
                "probability": probabilities[:k].detach(),
            }

    def _log_per_class(self, prefix: str, dice: ClassDice) -> dict[str, float | None]:
        """One TensorBoard curve per class (``val/dice/crack`` ...); a class in neither truth nor prediction: none."""
        values = {}
        for name, value in zip(self.classes or (), dice.per_class().tolist()):
            values[name] = None if math.isnan(value) else round(value, 6)
            if values[name] is not None:
                self.log(f"{prefix}/dice/{name}", value, sync_dist=False)
        return values

    def on_validation_epoch_end(self) -> None:
        self.tuned_threshold = self._tune(self.val_threshold_sweeps)
        if self.softmax_classes and self.tuned_threshold:
            # the epoch's Dice is at the defect threshold tuned on it: what this checkpoint is tested and used at
            self.log("val/dice", self.tuned_threshold["val_dice_at_best_threshold"], prog_bar=True, sync_dist=False)
            per_class = self.tuned_threshold["val_dice_per_class_at_best_threshold"]
            for name, value in zip(self.classes, per_class):
                if value is not None:
                    self.log(f"val/dice/{name}", value, sync_dist=False)
        else:
            self.log("val/dice", self.val_dice.compute(), prog_bar=True, sync_dist=False)
            if self.classes is not None:
                self._log_per_class("val", self.val_dice)
        self.val_dice.reset()
        for sweep in self.val_threshold_sweeps:
            sweep.reset()
        if self.tuned_threshold and "best_threshold" in self.tuned_threshold:
            self.log("val/best_threshold", self.tuned_threshold["best_threshold"])
            self.log("val/dice_at_best_threshold", self.tuned_threshold["val_dice_at_best_threshold"])

    def _tune(self, sweeps: nn.ModuleList) -> dict[str, Any] | None:
        """Binary and softmax classes: the best (defect) threshold and its Dice. Multilabel: one per class (plain lists:
        weights-only loading)."""
        if self.classes is None or self.softmax_classes:
            return sweeps[0].best(prefer=self.hparams.threshold)
        if not len(sweeps):
            return None
        best = [sweep.best(prefer=self.hparams.threshold) for sweep in sweeps]
        return {
            "best_threshold_per_class": [b["best_threshold"] if b else self.hparams.threshold for b in best],
            "val_dice_at_best_threshold_per_class": [b["val_dice_at_best_threshold"] if b else None for b in best],
        }

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_dice, self.test_threshold_sweeps)

    def on_test_epoch_end(self) -> None:
        if self.classes is None:
            self.test_dice_per_image = self.test_dice.per_image().tolist()
        else:
            self.test_dice_per_image = self.test_dice.image_means().tolist()
            per_image = self.test_dice.per_image()
            self.test_dice_per_image_per_class = {
                name: [None if math.isnan(v) else round(v, 6) for v in per_image[:, k].tolist()]
                for k, name in enumerate(self.classes)
            }
            self.test_dice_per_class = self._log_per_class("test", self.test_dice)
        self.log("test/dice", self.test_dice.compute())
        self.test_dice.reset()
        if self.classes is None or self.softmax_classes:
            self.test_dice_by_threshold = dict(
                zip(self.test_threshold_sweep.thresholds, self.test_threshold_sweep.compute().tolist())
            )
        for sweep in self.test_threshold_sweeps:
            sweep.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each checkpoint carries the threshold tuned on the validation pass of its own weights."""
        if self.tuned_threshold:
            checkpoint[TUNED_THRESHOLD_KEY] = dict(self.tuned_threshold)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tuned_threshold = checkpoint.get(TUNED_THRESHOLD_KEY, self.tuned_threshold)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the recipe's groups (decoder, then each encoder level at its rate); TransferSchedule steers
        them."""
        groups = parameter_groups(self.model, self.recipe, float(self.hparams.lr))
        return adam(groups, self.hparams.lr, self.hparams.weight_decay)
