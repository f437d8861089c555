"""The fast-path settings: loader workers per machine, pinned memory, fused Adam, progress bar refresh,
compile, and the refusal of DDP inside a Hydra multirun."""

from __future__ import annotations

import lightning as L
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

from defectseg.data import datasets
from defectseg.data.datamodules import SegmentationDataModule, resolve_num_workers
from defectseg.models import FreezePolicy, unet_paper
from defectseg.training.modules import SegmentationTask, adam
from defectseg.training.runner import Run, refuse_ddp_launch_in_multirun
from defectseg.utils.errors import UserError
from tests.helpers import TINY_TRAINER


@pytest.mark.parametrize(
    ("cpus", "processes", "workers"), [(2, 1, 0), (4, 1, 2), (16, 1, 8), (64, 1, 8), (16, 4, 2), (16, 8, 0)]
)
def test_auto_workers_leave_the_model_its_cores_and_split_them_between_processes(monkeypatch, cpus, processes, workers):
    monkeypatch.setattr(datasets.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert resolve_num_workers("auto", processes) == workers
    assert resolve_num_workers(3, processes) == 3  # an explicit number is taken as given


def test_cpu_training_gets_no_pinned_memory_and_no_persistent_workers(segmentation_set):
    datamodule = SegmentationDataModule(root=str(segmentation_set), image_size=32, batch_size=4, num_workers=0)
    datamodule.setup("fit")
    datamodule.trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    loader = datamodule.train_dataloader()
    assert loader.pin_memory is False
    assert loader.num_workers == 0 and loader.persistent_workers is False


def test_adam_is_fused_and_holds_only_trainable_parameters():
    model = unet_paper()
    FreezePolicy("encoder").apply(model)
    optimizer = adam(model, lr=1e-4, weight_decay=0.0)
    assert optimizer.param_groups[0]["fused"] is True
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not optimised & {id(p) for p in model.encoder.parameters()}


def test_compile_flag_compiles_the_network_in_place():
    eager, compiled = (
        SegmentationTask(unet_paper(channels=(4, 8)), compile=False),
        SegmentationTask(unet_paper(channels=(4, 8)), compile=True),
    )
    assert eager.model._compiled_call_impl is None
    assert compiled.model._compiled_call_impl is not None
    assert list(compiled.model.state_dict()) == list(
        eager.model.state_dict()
    )  # checkpoints and encoder files unchanged


def test_progress_bar_refreshes_when_the_logger_reads(compose_config, monkeypatch):
    import defectseg.training.runner as runner
    from defectseg.training.progress import EpochLines

    overrides = [o for o in TINY_TRAINER if "enable_progress_bar" not in o] + ["trainer.log_every_n_steps=7"]
    monkeypatch.setattr(runner, "interactive", lambda: True)  # a terminal: one bar
    run = Run(compose_config("finetune", overrides), monitor="val/dice", mode="max")
    assert run.trainer.progress_bar_callback.refresh_rate == 7
    run.close()
    monkeypatch.setattr(runner, "interactive", lambda: False)  # a log file: no bar, a line per epoch
    run = Run(compose_config("finetune", overrides, run_name="logged"), monitor="val/dice", mode="max")
    assert run.trainer.progress_bar_callback is None
    assert any(isinstance(c, EpochLines) for c in run.trainer.callbacks)
    run.close()


def test_ddp_inside_a_hydra_multirun_is_refused(compose_config):
    compose_config("finetune")
    hydra_cfg = HydraConfig.get()
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    with read_write(hydra_cfg):
        hydra_cfg.mode = RunMode.RUN
    refuse_ddp_launch_in_multirun(trainer)  # a single run may launch its processes
    try:
        with read_write(hydra_cfg):
            hydra_cfg.mode = RunMode.MULTIRUN
        with pytest.raises(UserError, match="multirun"):
            refuse_ddp_launch_in_multirun(trainer)
        refuse_ddp_launch_in_multirun(
            L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        )
    finally:
        with read_write(hydra_cfg):
            hydra_cfg.mode = RunMode.RUN
