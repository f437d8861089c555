"""Stage 1: pretrain the U-Net encoder on another domain, by the objective ``pretrain_task`` names
(classification: the paper's crack / no-crack classifier; segmentation; self_supervised: see
defectseg/training/pretraining.py).

    python -m defectseg.pretrain [pretrain_task=classification|segmentation|self_supervised] [experiment=quick] \\
        [dataset=...] [key=value ...]
    # trains only if that folder holds no finished run of this config:
    python -m defectseg.pretrain experiment=quick reuse=true hydra.run.dir=outputs/stage1/quick

Writes ``encoder.safetensors`` + ``encoder.json`` (and, with a decoder, ``decoder.safetensors``) into the
run directory and points ``outputs/pretrain/latest`` at it, where stage 2 looks by default.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from defectseg.config import validate_config
from defectseg.config.entry import entry_point
from defectseg.models import parameter_counts
from defectseg.models.encoder_io import WEIGHTS_NAME as ENCODER_WEIGHTS_NAME
from defectseg.models.encoder_io import save_encoder
from defectseg.models.segmentation import relative_weight_change
from defectseg.training.checkpoints import finished_run
from defectseg.training.pretraining import build_datamodule, build_objective, model_arguments
from defectseg.training.runner import Run, seed_run
from defectseg.utils.io import atomic_write_json, point_latest
from defectseg.utils.naming import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg, "pretrain")
    reused = finished_run(cfg, Path(cfg.paths.output_dir), ENCODER_WEIGHTS_NAME)
    if reused is not None:  # reuse=true and this directory already holds this config's stage 1: stage 2s share it
        point_latest(cfg.paths.pretrain_latest, cfg.paths.output_dir, cfg.paths.output_root)
        return reused
    seed_run(int(cfg.seed))
    segmentation_model = instantiate(
        cfg.model, **model_arguments(cfg)
    )  # before any slow work: starting weights may be refused
    run = Run(cfg, monitor="val/loss", mode="min")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    run.record_split(datamodule)

    budget = size_budget(cfg, run.trainer, datamodule)
    log.info(
        "stage 1 budget: %s optimiser steps = %s epochs x %s steps of %s images, "
        "over %s train images (each seen ~%s times)%s",
        f"{budget['train_steps']:,}",
        budget["epochs"],
        f"{budget['steps_per_epoch']:,}",
        budget["batch_size"],
        f"{budget['train_images']:,}",
        round(budget["train_steps"] * budget["batch_size"] / max(1, budget["train_images"])),
        " (train_steps)"
        if budget["sized_by"] == "train_steps"
        else " (trainer.max_epochs; train_steps=N sizes it in steps)",
    )
    objective = build_objective(cfg, segmentation_model, datamodule)
    task = objective.task
    counts = parameter_counts(segmentation_model)
    parameters = (
        f"{segmentation_model.name} encoder: {counts['encoder_params']:,} | "
        f"trained besides it ({objective.name}): {objective.trained_besides_encoder:,}"
    )
    run.log_text("model/parameters", parameters)
    classes = getattr(datamodule, "class_names", None)
    log.info(
        "stage 1 (%s) on %s: %s images (%s), %s; %s",
        objective.name,
        ", ".join(map(str, datamodule.roots)),
        datamodule.summary(),
        run.device,
        run.precision,
        parameters,
    )

    initial_encoder = {name: tensor.detach().clone() for name, tensor in objective.encoder.state_dict().items()}
    run.fit(task, datamodule)
    validated = run.trainer.validate(
        task, datamodule=datamodule, ckpt_path=run.best_checkpoint, weights_only=True, verbose=False
    )[0]
    tested, tested_by_source = {}, {}
    if len(datamodule.datasets.get("test", ())):
        tested = run.trainer.test(
            task, datamodule=datamodule, ckpt_path=run.best_checkpoint, weights_only=True, verbose=False
        )[0]
        for (
            source,
            loader,
        ) in datamodule.test_loaders_by_source().items():  # several sources: quality on each kind of photo
            result = run.trainer.test(
                task, dataloaders=loader, ckpt_path=run.best_checkpoint, weights_only=True, verbose=False
            )[0]
            tested_by_source[source] = {
                "test_images": len(loader.dataset),
                **{f"test_{name}": result.get(f"test/{name}") for name in ("loss", *objective.metric_names)},
            }

    encoder_change = relative_weight_change(
        initial_encoder, objective.encoder
    )  # the best checkpoint's weights, loaded by test/validate
    if encoder_change < 0.02:
        log.warning(
            "stage 1 moved the encoder's weights by only %.1f%% of their norm in %s optimiser steps: it is close to "
            "its random init, so a transfer carries little; give stage 1 more steps (train_steps=N) or more photos",
            100 * encoder_change,
            f"{run.trainer.global_step:,}",
        )
    results = {
        **{f"best_val_{name}": validated.get(f"val/{name}") for name in objective.metric_names},
        **{f"test_{name}": tested.get(f"test/{name}") for name in ("loss", *objective.metric_names)},
    }
    metrics: dict[str, Any] = {
        "stage": "pretrain",
        "pretrain_task": objective.name,
        "model": segmentation_model.name,
        "encoder_init": segmentation_model.encoder_init,
        "dataset": datamodule.name,
        "experiment": cfg.get("experiment_name"),
        "seed": int(cfg.seed),
        "classes": classes,
        **datamodule.summary(),
        "encoder_params": counts["encoder_params"],
        "head_params": objective.trained_besides_encoder,
        "total_params": counts["encoder_params"] + objective.trained_besides_encoder,
        "trainable_params": sum(p.numel() for p in task.parameters() if p.requires_grad),
        "best_val_loss": validated.get("val/loss"),
        **results,
        "best_epoch": run.history.best("val/loss", "min").get("epoch"),
        "encoder_weight_change": encoder_change,
        "budget": budget,
        "test_by_source": tested_by_source or None,
        "split_groups": datamodule.split_groups,
        "grouped_images": datamodule.grouped_images if datamodule.split_groups else None,
        **run.summary(),
    }
    if run.trainer.is_global_zero:
        provenance = {
            key: metrics[key]
            for key in (
                "pretrain_task",
                "model",
                "encoder_init",
                "dataset",
                "experiment",
                "seed",
                "classes",
                "train_images",
                "epochs",
                "budget",
                "encoder_weight_change",
                "best_val_loss",
                *results,
            )
        }
        metrics["encoder_weights"] = str(
            save_encoder(
                objective.encoder, run.output_dir, segmentation_model.architecture, extra={"pretrain": provenance}
            )
        )
        metrics.update(objective.save_extra(run.output_dir))
        latest = Path(cfg.paths.pretrain_latest)
        moved = point_latest(latest, run.output_dir, cfg.paths.output_root)
        metrics["latest"] = str(latest) if moved else None
        atomic_write_json(run.output_dir / "metrics.json", metrics)
        if moved:
            log.info("encoder written to %s (stage 2 finds it through %s)", metrics["encoder_weights"], latest)
        else:
            log.info(
                "encoder written to %s (outside %s, so %s was left as it was: stage 2 takes pretrained_encoder=%s)",
                metrics["encoder_weights"],
                cfg.paths.output_root,
                latest,
                run.output_dir,
            )
    run.log_hparams(
        {
            "stage": "pretrain",
            "pretrain_task": objective.name,
            "model": metrics["model"],
            "dataset": metrics["dataset"],
            "seed": metrics["seed"],
            "lr": float(cfg.optim.lr),
        },
        {"best_val_loss": metrics["best_val_loss"], **results},
    )
    run.close()
    return metrics


def size_budget(cfg: DictConfig, trainer: Any, datamodule: Any) -> dict[str, Any]:
    """Stage 1's length: ``train_steps`` optimiser steps in whole epochs (so a folder of 1,000 photos trains as long as
    one of 40,000), or trainer.max_epochs when train_steps is null. Sets the trainer's epochs; returns the budget."""
    per_epoch = len(datamodule.train_dataloader())
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float):
        per_epoch = int(per_epoch * limit)
    per_epoch = max(1, per_epoch)
    steps = cfg.get("train_steps")
    if steps and _epochs_on_command_line():
        log.info("trainer.max_epochs given on the command line: it sizes stage 1, not train_steps=%s", steps)
        steps = None
    if steps:
        epochs = max(1, math.floor(int(steps) / per_epoch + 0.5))
        trainer.fit_loop.max_epochs = epochs
    else:
        epochs = int(trainer.max_epochs)
    return {
        "train_steps": epochs * per_epoch,
        "epochs": epochs,
        "steps_per_epoch": per_epoch,
        "batch_size": int(datamodule.batch_size),
        "train_images": len(datamodule.datasets["train"]),
        "sized_by": "train_steps" if steps else "trainer.max_epochs",
    }


def _epochs_on_command_line() -> bool:
    """An explicit ``trainer.max_epochs=N`` means epochs, even under a preset that sizes stage 1 in steps."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    overrides = HydraConfig.get().overrides.task
    return any(str(o).lstrip("+").partition("=")[0] == "trainer.max_epochs" for o in overrides)


@entry_point("pretrain")
def main(cfg: DictConfig) -> float | None:
    metrics = run_pretrain(cfg)
    return metrics.get("best_val_loss")


if __name__ == "__main__":
    main()
