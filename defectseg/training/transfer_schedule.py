"""The transfer recipe's schedule during stage 2: which encoder levels train in each epoch, and at which rate.

Everything is a function of the epoch and the optimiser step (plus the step at which each
group started training, kept in checkpoints), so a run resumed after the switch point trains
the same parameters at the same rates as one that never stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from defectseg.models.freeze import TransferRecipe, encoder_levels, freeze_levels

log = logging.getLogger(__name__)


class TransferSchedule(L.Callback):
    """Applies a TransferRecipe: freezes / unfreezes levels at epoch starts, sets each group's rate every step.

    A group whose parameters are all frozen gets rate 0 (it holds no gradient either); a group
    that starts training ramps up linearly over ``warmup`` of the run's optimiser steps.
    """

    def __init__(self, recipe: TransferRecipe) -> None:
        self.recipe = recipe
        self.frozen_levels: int | None = None
        self.started_at: dict[str, int] = {}  # group name -> optimiser step at which it started training
        self.changes: list[dict[str, int]] = []  # what happened, for metrics.json and the log

    def state_dict(self) -> dict[str, Any]:
        return {"started_at": dict(self.started_at), "changes": [dict(c) for c in self.changes]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.started_at = {str(k): int(v) for k, v in state_dict.get("started_at", {}).items()}
        self.changes = [dict(c) for c in state_dict.get("changes", [])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        levels = encoder_levels(model.encoder)
        count = self.recipe.frozen_levels_at(trainer.current_epoch, int(trainer.max_epochs), len(levels))
        if count != self.frozen_levels:
            freeze_levels(model, count, levels)
            if self.frozen_levels is not None or trainer.current_epoch > 0:
                log.info(
                    "transfer=%s: epoch %d, %d of %d encoder levels frozen from here on",
                    self.recipe.name,
                    trainer.current_epoch,
                    count,
                    len(levels),
                )
            if not self.changes or self.changes[-1]["frozen_levels"] != count:
                self.changes.append({"epoch": trainer.current_epoch, "frozen_levels": count})
            self.frozen_levels = count
        self.set_rates(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.recipe.warmup:
            self.set_rates(trainer)

    def set_rates(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        total = trainer.estimated_stepping_batches if self.recipe.warmup else 0
        ramp = max(1, round(float(self.recipe.warmup) * float(total))) if total else 1
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                name = group.get("name")
                if name is None or "base_lr" not in group:
                    continue
                if not any(p.requires_grad for p in group["params"]):
                    group["lr"] = 0.0
                    continue
                start = self.started_at.setdefault(name, step)
                group["lr"] = group["base_lr"] * min(1.0, (step - start + 1) / ramp)
