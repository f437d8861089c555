"""Progress one line at a time: one bar in a terminal, plain lines in a file.

Lightning's TQDM bar nests a validation bar under the epoch bar; in a terminal the two fight for lines, in a saved log
their cursor movements leave garbage. So: in a terminal only the epoch bar (validation shows in its postfix); when
stderr is a file or a pipe, no bar at all, and one log line per epoch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

log = logging.getLogger(__name__)
EPOCH_LINE_KEYS = ("train/loss_epoch", "val/loss", "val/dice", "val/accuracy", "val/auroc")


class OneBar(TQDMProgressBar):
    """The epoch bar only: validation during fit runs without a bar of its own (its results go in the postfix)."""

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn == "fit":
            return Tqdm(disable=True)
        return super().init_validation_tqdm()


class EpochLines(L.Callback):
    """One plain log line per epoch, for logs read after the fact."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics: dict[str, Any] = trainer.callback_metrics
        shown = [f"{key} {float(metrics[key]):.4f}" for key in EPOCH_LINE_KEYS if key in metrics]
        log.info(
            "epoch %d/%s: %s (%.0f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?",
            ", ".join(shown) or "no metrics yet",
            time.perf_counter() - self._start,
        )
