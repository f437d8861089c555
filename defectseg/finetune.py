"""Stage 2: train the U-Net decoder (and, by the transfer recipe, the encoder) on defect masks.

    python -m defectseg.finetune [transfer=full_finetune|scratch|frozen_encoder|staged|...] [experiment=quick] [key=...]
    python -m defectseg.finetune -m transfer=scratch,frozen_encoder,full_finetune seed=0,1,2      # a comparison sweep

The stage-1 encoder comes from ``pretrained_encoder`` (default: ``outputs/pretrain/latest``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from defectseg.config import validate_config
from defectseg.config.entry import entry_point
from defectseg.data.classes import ClassSpec
from defectseg.inference.scale import training_input_scale
from defectseg.models import FreezePolicy, parameter_counts
from defectseg.models.encoder_io import load_decoder, load_encoder, resolve_encoder_path
from defectseg.models.freeze import TransferRecipe, encoder_levels, level_weight_changes
from defectseg.training.losses import frequency_weights
from defectseg.training.modules import SegmentationTask
from defectseg.training.runner import Run, calibrate_features, seed_run
from defectseg.training.transfer_schedule import TransferSchedule
from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_json, point_latest
from defectseg.utils.naming import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def load_pretrained(model: Any, policy: FreezePolicy, location: str | None) -> dict[str, Any] | None:
    """Load the stage-1 encoder the policy asks for, or say in one line how to get one.

    An encoder built with ``model.encoder_weights`` (ImageNet, a local file) already holds
    its starting point: the policy applies to those weights and no stage-1 encoder is read.
    """
    if not policy.loads_encoder:
        if model.encoder_init:
            raise UserError(
                f"transfer=scratch trains from random weights, but model.encoder_weights={model.encoder_init} "
                "starts the encoder from pretrained ones: use another transfer= recipe (full_finetune, frozen_encoder, "
                "staged...) to train from them, or model.encoder_weights=null"
            )
        return None
    if model.encoder_init:
        log.info(
            "transfer.freeze=%s applies to the encoder weights from model.encoder_weights=%s; "
            "no stage-1 encoder is loaded",
            policy.mode,
            model.encoder_init,
        )
        return {"path": model.encoder_init, "pretrain_task": Path(model.encoder_init).name}
    try:
        if not location:
            raise FileNotFoundError("pretrained_encoder is not set")
        path = resolve_encoder_path(location)
    except FileNotFoundError:
        raise UserError(
            f"transfer.freeze={policy.mode} needs a stage-1 encoder, but there is none at {location}: "
            "run `make pretrain` first, or set pretrained_encoder=PATH "
            "(a stage-1 run directory or its encoder.safetensors), "
            "or train without one: transfer=scratch"
        ) from None
    info = load_encoder(model.encoder, path, model.architecture)
    log.info("loaded stage-1 encoder %s (pretrained on %s)", path, info.get("pretrain", {}).get("dataset"))
    return {"path": str(path.resolve()), "sha256": info.get("sha256"), **info.get("pretrain", {})}


def load_pretrained_decoder(model: Any, pretrained: dict[str, Any] | None) -> list[str] | None:
    """``init_decoder=true``: the decoder (and, from a segmentation stage 1, the head) from the stage-1 run's
    decoder.safetensors."""
    if pretrained is None or not pretrained.get("sha256"):
        raise UserError(
            "init_decoder=true starts the decoder from a stage-1 run's decoder.safetensors: it needs a stage-1 "
            "encoder (pretrained_encoder=DIR and a transfer= recipe other than scratch)"
        )
    try:
        parts = load_decoder(model, Path(pretrained["path"]).parent, model.architecture)
    except FileNotFoundError as error:
        raise UserError(
            f"init_decoder=true: {error}; pretrain with pretrain_task=segmentation or self_supervised "
            "(pretrain_task.save_decoder=true), or set init_decoder=false"
        ) from None
    log.info("decoder initialised from the stage-1 run (%s)", ", ".join(parts))
    return parts


def class_spec(cfg: DictConfig) -> ClassSpec | None:
    """``dataset.classes`` (+ ``dataset.multilabel``) as a ClassSpec; None for a binary run."""
    try:
        return ClassSpec.from_config(cfg.dataset.get("classes"), bool(cfg.dataset.get("multilabel", False)))
    except ValueError as error:
        raise UserError(str(error)) from None


def build_model(cfg: DictConfig, spec: ClassSpec | None) -> Any:
    """The model with one output channel per logit map the classes need (1 for binary)."""
    channels = 1 if spec is None else spec.output_channels
    configured = cfg.model.get("num_classes", 1)
    if spec is None and configured not in (None, 1):
        raise UserError(
            f"model.num_classes={configured} without dataset.classes: name the defect classes instead, "
            "e.g. dataset.classes=[crack,corrosion,pit,scratch] (the model gets its channels from them)"
        )
    if spec is not None and configured not in (None, 1, channels):
        raise UserError(
            f"model.num_classes={configured}, but dataset.classes={list(spec.names)} "
            f"{'(multilabel) ' if spec.multilabel else ''}need {channels} output channels; leave model.num_classes out"
        )
    return instantiate(cfg.model, num_classes=channels)


def resolve_class_weights(cfg: DictConfig, spec: ClassSpec | None, datamodule: Any) -> list[float] | None:
    """``task.class_weights``: null, one weight per class, or ``frequency`` (from the train split's pixels)."""
    weights = cfg.task.get("class_weights")
    if weights is None:
        return None
    if spec is None:
        raise UserError("task.class_weights needs dataset.classes (one weight per declared class)")
    if weights == "frequency":
        pixels = list(datamodule.class_statistics("train")["pixels"].values())
        return frequency_weights(pixels)
    if isinstance(weights, str) or len(weights) != spec.num_classes:
        raise UserError(
            f"task.class_weights={weights}: give 'frequency' or {spec.num_classes} weights, "
            f"one per class of {list(spec.names)}"
        )
    return [float(w) for w in weights]


def run_finetune(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg, "finetune")
    seed_run(int(cfg.seed))
    recipe = TransferRecipe.from_config(cfg.transfer)
    policy = recipe.policy
    spec = class_spec(cfg)
    model = build_model(cfg, spec)
    pretrained = load_pretrained(model, policy, cfg.get("pretrained_encoder"))  # before any slow work
    decoder_init = load_pretrained_decoder(model, pretrained) if cfg.get("init_decoder", False) else None
    schedule = TransferSchedule(recipe)
    run = Run(cfg, monitor="val/dice", mode="max", callbacks=[schedule])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    run.record_split(datamodule)
    frozen_levels = policy.apply(model)
    silent_channels = None
    if cfg.get("calibrate_features", True) and run.resume_from is None:  # a checkpoint carries the calibration
        silent_channels = calibrate_features(model, datamodule, int(cfg.get("calibration_batches", 8)))
        if pretrained is not None and silent_channels and max(f or 0.0 for f in silent_channels) > 0.2:
            log.warning(
                "the pretrained encoder has channels that never fire on these images (share per level: %s): they carry "
                "nothing to the decoder; "
                "a stage 1 with a lower optim.lr, or freeze=none, may transfer better",
                ", ".join("-" if f is None else f"{f:.0%}" for f in silent_channels),
            )
    counts = parameter_counts(model)
    task_options = {key: value for key, value in cfg.task.items() if key != "class_weights"}
    class_weights = resolve_class_weights(cfg, spec, datamodule)
    if spec is not None:
        task_options.update(classes=list(spec.names), multilabel=spec.multilabel, class_weights=class_weights)
    task = SegmentationTask(
        model,
        lr=float(cfg.optim.lr),
        weight_decay=float(cfg.optim.weight_decay),
        channels_last=bool(cfg.channels_last),
        compile=bool(cfg.get("compile", False)),
        transfer=asdict(recipe),
        **task_options,
    )
    planned = recipe.schedule(int(run.trainer.max_epochs or 1), len(encoder_levels(model.encoder)))
    log.info(
        "stage 2, transfer=%s (%s): %s of %s parameters train at the start; data %s %s; %s, %s",
        recipe.name,
        describe(recipe, planned),
        f"{counts['trainable_params']:,}",
        f"{counts['total_params']:,}",
        datamodule.root,
        datamodule.summary(),
        run.device,
        run.precision,
    )

    run.log_text("model/parameters", " | ".join(f"{name}: {value:,}" for name, value in counts.items()))
    encoder_start = {name: value.detach().clone() for name, value in model.encoder.state_dict().items()}
    run.fit(task, datamodule)
    val_dice_by_epoch = [row.get("val/dice") for row in run.history.epochs]  # all epochs: read before test()
    schedule_ran = [
        dict(change) for change in schedule.changes
    ]  # before test() restores the best epoch's callback state
    tested = run.trainer.test(
        task, datamodule=datamodule, ckpt_path=run.best_checkpoint, weights_only=True, verbose=False
    )[0]
    best = run.history.best("val/dice", "max")
    tuned = task.tuned_threshold or {}  # the best checkpoint's, restored when test loaded it

    metrics: dict[str, Any] = {
        "stage": "finetune",
        "model": model.name,
        "transfer": recipe.name,
        "transfer_recipe": asdict(recipe),
        "transfer_schedule": schedule_ran,  # (epoch, frozen encoder levels from then on), as it ran
        "freeze": policy.mode,
        "freeze_depth": frozen_levels if policy.mode == "partial" else None,
        "encoder_silent_channels": silent_channels,
        "pretrain_task": (pretrained or {}).get("pretrain_task"),
        "init_decoder": decoder_init,
        "dataset": datamodule.name,
        "experiment": cfg.get("experiment_name"),
        "seed": int(cfg.seed),
        **datamodule.summary(),
        # how the training photos were resized: predict's scale=auto shows new photos to the model the same way
        "input_scale": training_input_scale(datamodule.split_files.get("train", []), datamodule.image_size),
        **counts,
        "best_val_dice": best.get("val/dice"),
        "best_epoch": best.get("epoch"),
        "test_dice": tested.get("test/dice"),
        "test_dice_per_image": [round(v, 6) for v in task.test_dice_per_image],
        "val_dice_by_epoch": val_dice_by_epoch,  # the learning curve, one value per epoch
        # per encoder level (shallowest first), how far stage 2 moved it from where it started, at the best epoch
        "encoder_level_change": [round(v, 6) for v in level_weight_changes(model.encoder, encoder_start)],
        "threshold": float(task.hparams.threshold),
        "best_threshold": tuned.get("best_threshold"),
        "val_dice_at_best_threshold": tuned.get("val_dice_at_best_threshold"),
        "test_dice_at_best_threshold": task.test_dice_by_threshold.get(tuned.get("best_threshold")),
        "pretrained_encoder": pretrained,
        **(class_metrics(spec, task, best, datamodule, class_weights) if spec is not None else {}),
        **run.summary(),
    }
    if run.trainer.is_global_zero:
        atomic_write_json(run.output_dir / "metrics.json", metrics)
        if cfg.paths.get("finetune_latest"):
            # where predict and export look by default; a run outside the output root leaves it alone
            point_latest(cfg.paths.finetune_latest, run.output_dir, cfg.paths.output_root)
        log.info(
            "transfer=%s: best val Dice %.4f (epoch %s), test Dice %.4f -> %s",
            recipe.name,
            _or_nan(metrics["best_val_dice"]),
            metrics["best_epoch"],
            _or_nan(metrics["test_dice"]),
            run.output_dir / "metrics.json",
        )
    run.log_hparams(
        {
            "stage": "finetune",
            "model": metrics["model"],
            "transfer": recipe.name,
            "freeze": policy.mode,
            "pretrain_task": str(metrics.get("pretrain_task")),
            "dataset": metrics["dataset"],
            "experiment": str(metrics.get("experiment")),
            "seed": metrics["seed"],
            "train_images": metrics.get("train_images", 0),
            "lr": float(cfg.optim.lr),
        },
        {k: metrics[k] for k in ("best_val_dice", "test_dice", "trainable_params")},
    )
    run.close()
    return metrics


def class_metrics(
    spec: ClassSpec, task: SegmentationTask, best: dict[str, float], datamodule: Any, weights: list[float] | None
) -> dict[str, Any]:
    """The metrics.json fields of a multi-class run: Dice per class (val at the best epoch, test), per image."""
    tuned = task.tuned_threshold or {}
    return {
        "classes": list(spec.names),
        "multilabel": spec.multilabel,
        "class_weights": weights,
        "train_class_pixels": datamodule.class_statistics("train")["pixels"],
        "best_val_dice_per_class": {name: best.get(f"val/dice/{name}") for name in spec.names},
        "test_dice_per_class": task.test_dice_per_class,
        "test_dice_per_image_per_class": task.test_dice_per_image_per_class,
        "best_threshold_per_class": tuned.get("best_threshold_per_class"),
    }


def describe(recipe: TransferRecipe, planned: list[tuple[int, int]]) -> str:
    """One line a user can check the recipe against: the freeze schedule and the encoder's rate."""
    if recipe.freeze == "scratch":
        return "random init, everything trains"
    steps = ", ".join(f"epoch {epoch}: {count} levels frozen" for epoch, count in planned)
    rates = f"encoder lr x{recipe.encoder_lr_scale:g}" + (
        f", x{recipe.level_lr_decay:g} per level towards the input" if recipe.level_lr_decay != 1 else ""
    )
    warmup = f", warm-up {recipe.warmup:.0%} of the steps" if recipe.warmup else ""
    return f"{steps}; {rates}{warmup}"


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value  # a Dice of 0.0 is a result, not a missing one


@entry_point("finetune")
def main(cfg: DictConfig) -> float | None:
    metrics = run_finetune(cfg)
    return metrics.get("best_val_dice")


if __name__ == "__main__":
    main()
