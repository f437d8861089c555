"""Callbacks: training-time measurement and the mask previews people look at in TensorBoard."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class TrainingClock(L.Callback):
    """Seconds spent in training batches (validation excluded) and images seen, for images/s."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.images = 0
        self.fit_seconds = 0.0
        self._epoch_start: float | None = None
        self._last_end: float | None = None
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = None
        self._last_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._last_end = time.perf_counter()
        self.images += int(batch["image"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None and self._last_end is not None:
            self.train_seconds += self._last_end - self._epoch_start

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else 0.0


def overlay_grid(images: torch.Tensor, masks: torch.Tensor, probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Rows of (photo | true mask in green | prediction in red) as one 3xHxW float image."""
    from torchvision.utils import make_grid

    photos = images.float().cpu() / (255.0 if images.dtype == torch.uint8 else 1.0)
    truth = masks.float().cpu().clamp(0, 1)
    predicted = (probabilities.float().cpu() > threshold).float()

    def tint(mask: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
        colour_map = torch.tensor(colour).view(1, 3, 1, 1)
        return photos * (1 - 0.55 * mask) + colour_map * 0.55 * mask

    tiles = torch.stack([photos, tint(truth, (0.0, 1.0, 0.0)), tint(predicted, (1.0, 0.0, 0.0))], dim=1).flatten(0, 1)
    return make_grid(tiles.clamp(0, 1), nrow=3, padding=2, pad_value=1.0)


class SegmentationPreview(L.Callback):
    """Every few epochs, a grid of validation photos with true and predicted masks in TensorBoard."""

    def __init__(self, every_n_epochs: int = 5) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        preview = getattr(pl_module, "preview", None)
        if trainer.sanity_checking or preview is None or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        grid = overlay_grid(preview["image"], preview["mask"], preview["probability"], pl_module.hparams.threshold)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/preview (photo | truth | prediction)", grid, global_step=trainer.global_step)


class EpochHistory(L.Callback):
    """The logged epoch metrics as plain floats, to find the values at the best epoch afterwards."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/"):
                row[key] = float(value)
        self.epochs.append(row)

    def best(self, monitor: str, mode: str = "max") -> dict[str, float]:
        rows = [row for row in self.epochs if monitor in row]
        if not rows:
            return {}
        return (max if mode == "max" else min)(rows, key=lambda row: row[monitor])
