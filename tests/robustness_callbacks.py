"""Callbacks that tests put into real runs through the config (``+callbacks.NAME._target_=...``)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import lightning as L
import torch


class Throttle(L.Callback):
    """Sleeps after every training batch, so a subprocess is still training when a test signals it."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        time.sleep(self.seconds)


class InjectNaN(L.Callback):
    """Poisons one weight with NaN when epoch ``at_epoch`` starts, so the loss of that epoch's first batch is NaN."""

    def __init__(self, at_epoch: int = 1) -> None:
        self.at_epoch = int(at_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.at_epoch and batch_idx == 0:
            with torch.no_grad():
                weight = next(p for p in pl_module.parameters() if p.requires_grad)
                weight[(0,) * weight.dim()] = float("nan")


class SendSignal(L.Callback):
    """Sends ``signal_name`` to this very process after training batch ``at_step`` (a user's Ctrl-C, in-process)."""

    def __init__(self, at_step: int = 2, signal_name: str = "SIGINT") -> None:
        self.at_step = int(at_step)
        self.signal_name = signal_name

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class WaitForFile(L.Callback):
    """Holds training after its first batch until ``path`` exists, so a test can act while the run is surely live."""

    def __init__(self, path: str, waiting: str | None = None, timeout: float = 300.0) -> None:
        self.path = path
        self.waiting = waiting  # created when the hold begins
        self.timeout = float(timeout)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.waiting:
            open(self.waiting, "w").close()
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            time.sleep(0.05)
