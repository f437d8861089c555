"""LightningModules for the two stages. Models come in built (config does the wiring);
these hold the loss, the metrics and the optimiser, nothing architectural."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import AUROC, Accuracy

from defectseg.training.losses import BCEDiceLoss
from defectseg.training.metrics import TUNED_THRESHOLD_KEY, DefectDice, ThresholdSweep


def images_to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 batches travel to the device; the conversion to [0, 1] floats happens there."""
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def prepare_network(network: nn.Module, channels_last: bool, compile: bool) -> None:
    """The fast path both stages share: NHWC weights, and optionally torch.compile in place (state_dict keys unchanged)."""
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if compile:
        network.compile()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Frozen parameters stay out of the optimiser: no state, no work for them."""
    return [p for p in module.parameters() if p.requires_grad]


def check_learning_rate(lr: float) -> None:
    """Every task's optimiser takes optim.lr: one message for a bad one, before any work."""
    if lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {lr}")


def adam(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """The paper's Adam over the trainable parameters, fused into one kernel on CPU and CUDA: the
    default per-tensor update of unet_paper's 7.8M parameters is hundreds of small kernels
    (measured on one CPU thread: 12 ms per step fused, 54-62 ms not)."""
    parameters = trainable_parameters(module)
    fused = bool(parameters) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in parameters
    )
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


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
        check_learning_rate(lr)
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
    """Stage 2: the U-Net (encoder frozen or not by the freeze policy) learns defect masks."""

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
    ) -> None:
        super().__init__()
        check_learning_rate(lr)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        self.loss = BCEDiceLoss(bce_weight, dice_weight)
        self.val_dice = DefectDice(empty_score=empty_score)
        self.test_dice = DefectDice(empty_score=empty_score)
        self.test_dice_per_image: list[float] = []
        # Dice over a grid of thresholds: the best on val is stored with each checkpoint for predict
        self.val_threshold_sweep = ThresholdSweep(empty_score=empty_score)
        self.test_threshold_sweep = ThresholdSweep(empty_score=empty_score)
        self.tuned_threshold: dict[str, float] | None = None
        self.test_dice_by_threshold: dict[float, float] = {}
        self.preview: dict[str, torch.Tensor] | None = None
        prepare_network(self.model, channels_last, compile)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images_to_float(images, self.hparams.channels_last))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _evaluate(
        self, batch: dict[str, torch.Tensor], prefix: str, dice: DefectDice, sweep: ThresholdSweep
    ) -> torch.Tensor:
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
        probabilities = torch.sigmoid(logits)
        dice.update(probabilities > self.hparams.threshold, masks > 0, index=batch.get("index"))
        sweep.update(probabilities, masks)
        return probabilities

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        probabilities = self._evaluate(batch, "val", self.val_dice, self.val_threshold_sweep)
        if batch_idx == 0 and self.hparams.preview_images:
            k = self.hparams.preview_images
            self.preview = {
                "image": batch["image"][:k].detach(),
                "mask": batch["mask"][:k].detach(),
                "probability": probabilities[:k].detach(),
            }

    def on_validation_epoch_end(self) -> None:
        self.log("val/dice", self.val_dice.compute(), prog_bar=True, sync_dist=False)
        self.val_dice.reset()
        self.tuned_threshold = self.val_threshold_sweep.best(prefer=self.hparams.threshold)
        self.val_threshold_sweep.reset()
        if self.tuned_threshold:
            self.log("val/best_threshold", self.tuned_threshold["best_threshold"])
            self.log("val/dice_at_best_threshold", self.tuned_threshold["val_dice_at_best_threshold"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_dice, self.test_threshold_sweep)

    def on_test_epoch_end(self) -> None:
        self.test_dice_per_image = self.test_dice.per_image().tolist()
        self.log("test/dice", self.test_dice.compute())
        self.test_dice.reset()
        self.test_dice_by_threshold = dict(
            zip(self.test_threshold_sweep.thresholds, self.test_threshold_sweep.compute().tolist())
        )
        self.test_threshold_sweep.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each checkpoint carries the threshold tuned on the validation pass of its own weights."""
        if self.tuned_threshold:
            checkpoint[TUNED_THRESHOLD_KEY] = dict(self.tuned_threshold)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tuned_threshold = checkpoint.get(TUNED_THRESHOLD_KEY, self.tuned_threshold)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self, self.hparams.lr, self.hparams.weight_decay)
