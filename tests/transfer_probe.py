"""A callback tests put into real stage-2 runs (``+callbacks.probe._target_=tests.transfer_probe.PhaseProbe``):
it records what trains in each epoch. A module of its own, so the run and the test share one class."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch

from defectseg.models.freeze import encoder_levels


class PhaseProbe(L.Callback):
    """Records, after each epoch's first optimiser step, which encoder levels train and each group's rate."""

    records: ClassVar[list[dict[str, Any]]] = []
    stop_after_epoch: ClassVar[int | None] = None
    optimizer_at_start: ClassVar[list[dict[str, Any]]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = trainer.optimizers[0].state_dict()["state"]  # live tensors: copied, later steps update them in place
        copied = {
            index: {key: torch.as_tensor(value).clone() for key, value in s.items()} for index, s in state.items()
        }
        PhaseProbe.optimizer_at_start.append({"epoch": trainer.current_epoch, "state": copied})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx:
            return
        model = pl_module.model
        levels = [module for level in encoder_levels(model.encoder) for module in level]
        groups = trainer.optimizers[0].param_groups
        PhaseProbe.records.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step - 1,  # the step just taken
                "total_steps": trainer.estimated_stepping_batches,
                "trains": [any(p.requires_grad for p in level.parameters()) for level in levels],
                "train_mode": [level.training for level in levels],
                "lr": {group["name"]: group["lr"] for group in groups},
                "encoder_in_optimizer": sum(len(g["params"]) for g in groups if g["name"] != "decoder"),
            }
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if PhaseProbe.stop_after_epoch is not None and trainer.current_epoch >= PhaseProbe.stop_after_epoch:
            trainer.should_stop = True
