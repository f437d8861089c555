"""Callbacks: training-time measurement, mask previews for TensorBoard, and the guards that keep a run's files good."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from defectseg.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)


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

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last_end = time.perf_counter()
        self.images += int(batch["image"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None and self._last_end is not None:
            self.train_seconds += self._last_end - self._epoch_start

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Carried in checkpoints, so a resumed run reports the time of the whole run."""
        return {"train_seconds": self.train_seconds, "images": self.images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.images = int(state_dict.get("images", 0))


def overlay_grid(
    images: torch.Tensor, masks: torch.Tensor, probabilities: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
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
    """Every few epochs, a grid of validation photos with true and predicted masks (or a task's own ``preview_grid()``)
    in TensorBoard."""

    def __init__(self, every_n_epochs: int = 5) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        preview = getattr(pl_module, "preview", None)
        if trainer.sanity_checking or preview is None or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        if hasattr(pl_module, "preview_grid"):  # a task with its own picture (self-supervised reconstruction)
            tag, grid = pl_module.preview_grid()
        else:
            tag, grid = (
                "val/preview (photo | truth | prediction)",
                overlay_grid(preview["image"], preview["mask"], preview["probability"], pl_module.hparams.threshold),
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=trainer.global_step)


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

    def state_dict(self) -> dict[str, Any]:
        """Carried in checkpoints: after a resume, the best epoch is still sought over every epoch."""
        return {"epochs": [dict(row) for row in self.epochs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [dict(row) for row in state_dict.get("epochs", [])]

    def best(self, monitor: str, mode: str = "max") -> dict[str, float]:
        rows = [row for row in self.epochs if monitor in row]
        if not rows:
            return {}
        return (max if mode == "max" else min)(rows, key=lambda row: row[monitor])


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the model is no longer worth saving."""


class FiniteLossGuard(L.Callback):
    """Stops training at the first non-finite loss, before any checkpoint could store the broken model.

    Each step only appends a device-side ``isfinite`` flag; the flags are read (one host
    sync) every ``check_every_n_steps`` steps and before anything saves or validates, so a
    GPU is not stalled every step.
    """

    def __init__(self, check_every_n_steps: int = 20) -> None:
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._flags: list[torch.Tensor] = []
        self._where: list[tuple[int, int, int]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        self._flags.append(torch.isfinite(loss.detach()).all())
        self._where.append((trainer.current_epoch, batch_idx, trainer.global_step))
        if len(self._flags) >= self.check_every_n_steps:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if not self._flags:
            return
        finite = torch.stack(self._flags).cpu()
        where = self._where
        self._flags, self._where = [], []
        if bool(finite.all()):
            return
        epoch, batch, step = where[int((~finite).nonzero()[0])]
        last = _last_checkpoint(trainer)
        kept = f"the last good state is {last}" if last and last.is_file() else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss became NaN or infinite at epoch {epoch}, batch {batch} (optimizer step {step}); training "
            f"stopped and {kept}. "
            "Try a lower optim.lr, trainer.precision=32-true, or check the data"
        )


class GracefulStop(L.Callback):
    """SIGTERM (and a first Ctrl-C) stops training after the current batch and saves ``last.ckpt`` to resume from.

    Lightning 2.x already turns SIGTERM into a stop after the current batch
    (``SIGTERMException``) but saves nothing; Ctrl-C raises ``KeyboardInterrupt`` wherever
    the code happens to be, possibly mid optimizer step. Here a first Ctrl-C takes the
    SIGTERM path (a clean batch boundary), a second one aborts at once, and the state at
    the stop is saved unless it is no longer finite.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.saved: Path | None = None
        self._previous_sigint: Any = None
        self._sigint = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signal_name, self.saved, self._sigint = None, None, False
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._sigint = True
        signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)  # a second Ctrl-C aborts
        print("\nstopping after the current batch (Ctrl-C again to abort without saving) ...", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM handler: stop at the next batch boundary

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    @property
    def signal_number(self) -> int:
        return int(signal.SIGINT if self._sigint else signal.SIGTERM)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        self.signal_name = "SIGINT" if self._sigint else "SIGTERM"
        path = _last_checkpoint(trainer)
        if path is None:
            return
        try:
            trainer.save_checkpoint(
                path, weights_only=False
            )  # FiniteLossGuard.on_save_checkpoint refuses a broken model
        except NonFiniteLossError as error:
            log.error("not saving at the stop: %s", error)
            return
        self.saved = path


def _last_checkpoint(trainer: L.Trainer) -> Path | None:
    callback = trainer.checkpoint_callback
    if callback is None or not getattr(callback, "dirpath", None):
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class AveragedWeights(EMAWeightAveraging):
    """An exponential moving average of the weights (Lightning's EMA callback) that validation, checkpoints and the
    test all use: a few-label run's last steps wobble, their average is steadier (SWA / EMA in the fine-tuning
    literature).

    Lightning's callback, once fitted, loads a checkpoint's *current* weights back even when ``trainer.test`` loads
    the best checkpoint, so the test would score weights that were never validated; here only a resumed fit does.
    """

    def __init__(self, decay: float = 0.99, **kwargs: Any) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ConfigError(f"callbacks.weight_averaging.decay is a share between 0 and 1, got {decay!r}")
        super().__init__(decay=float(decay), **kwargs)
        self.decay = float(decay)

    @property
    def label(self) -> str:
        """How metrics.json and the report name it."""
        return f"ema {self.decay:g}"

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resume: both the live and the averaged weights come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
