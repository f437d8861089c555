"""What each config section may hold: one dataclass per plain section, registered in Hydra's ConfigStore.

The stage configs (``conf/pretrain.yaml`` ...) extend their schema (``defaults: [pretrain_schema, _self_, ...]``), so
Hydra refuses an unknown key or a wrong type while composing; ``defectseg.config.validate_config`` checks the
composed config against the same dataclasses once more (``+key=value`` slips past Hydra), then each key's range
(``metadata["check"]``), the ``_target_`` sections against what they build, and the cross-key rules (rules.py).

To add a key: one line in the dataclass of its section below (type, and ``checked(...)`` for a range), and its
default in the YAML file that sets it. Defaults live in the YAML files, except where no YAML names the key
(``Augment``).
Sections with a ``_target_`` (model, dataset, trainer, logger, callbacks) need nothing here: their keys are the
arguments of what they build.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

# A check returns a problem (said after the key's name) or None; it sees the value, never None (null passes).
Check = Callable[[Any], str | None]

# metadata["builds"] of a section that Hydra instantiates: its keys are checked against the target's signature.
BUILDS_ONE, BUILDS_MANY = "one", "many"  # a `_target_` node; a name -> `_target_` node mapping (callbacks)


def checked(check: Check, default: Any = MISSING) -> Any:
    """A field whose value must also pass ``check`` (types are Hydra's job)."""
    return field(default=default, metadata={"check": check})


def builds(kind: str = BUILDS_ONE, required: bool = True) -> Any:
    return field(default=MISSING if required else None, metadata={"builds": kind})


def positive(value: Any) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be a positive number, got {value}"


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}, got {value}"


def between(low: float, high: float, strict: bool = False) -> Check:
    def check(value: Any) -> str | None:
        inside = low < value < high if strict else low <= value <= high
        return None if inside else f"must lie {'strictly ' if strict else ''}between {low} and {high}, got {value}"

    return check


probability_threshold = between(0, 1, strict=True)  # task.threshold, pretrain_task.threshold, predict's threshold


def raises(build: Callable[[Any], Any]) -> Check:
    """The code's own check (a constructor raising ValueError) as the key's check: the rule stays in one place."""

    def check(value: Any) -> str | None:
        try:
            build(value)
        except (ValueError, TypeError) as error:
            return str(error)
        return None

    return check


def _pooling(value: str) -> None:
    from defectseg.models.classifier import GlobalPool

    GlobalPool(value)


def _scale(value: Any) -> None:
    from defectseg.inference.scale import parse_scale

    parse_scale(value)


def _min_area(value: Any) -> None:
    from defectseg.inference.scale import min_area_px

    min_area_px(value, 1.0, 1.0)


def _mm_per_px(value: Any) -> None:
    from defectseg.inference.scale import MillimetresPerPixel

    MillimetresPerPixel(value, None)


def _layer_widths(value: Any) -> str | None:
    ok = all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
    return None if ok else f"must be a list of positive layer widths, got {value}"


# Photos per class of the embedded synthetic stage-1 sets (conf/dataset/synthetic_cls.yaml ...); experiment=quick and
# paper set 20000. Top-level, not dataset.synthetic.n_per_class, so that an experiment sizes those sets without
# writing into a folder data set (which has no synthetic part).
STAGE1_SYNTHETIC_PER_CLASS = 1000

# ---- sections every stage shares ----------------------------------------------------------------------------------


@dataclass
class Paths:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_root: str = MISSING
    output_dir: str | None = MISSING  # null under --cfg job --resolve (no run yet)
    pretrain_latest: str = MISSING
    shared_datasets: str = MISSING
    finetune_latest: str = MISSING


@dataclass
class Optim:
    lr: float = checked(positive)
    weight_decay: float = checked(at_least(0))


@dataclass
class Augment:
    """``dataset.augment`` (defectseg/data/transforms.py): training-time noise; no YAML sets all of these."""

    enabled: bool = True
    brightness: float = checked(between(0, 1), 0.2)  # RandomBrightnessContrast limits
    contrast: float = checked(between(0, 1), 0.2)
    noise_std: float = checked(between(0.01, 1), 0.04)  # GaussNoise std range (0.01, noise_std) of the full scale
    noise_p: float = checked(between(0, 1), 0.2)
    blur_sigma: float = checked(between(0.3, 10), 1.0)  # GaussianBlur sigma range (0.3, blur_sigma)
    blur_p: float = checked(between(0, 1), 0.1)


@dataclass
class TrainingStage:
    """Top-level keys of both training stages."""

    stage: str = MISSING
    experiment_name: str | None = None
    seed: int = checked(between(0, 2**32 - 1))
    channels_last: bool = MISSING
    compile: bool = MISSING  # torch.compile the network
    resume: bool = MISSING  # continue this run directory's last.ckpt
    ckpt_path: str | None = None  # or continue from a checkpoint: last (= resume=true) or PATH
    stage1_synthetic_per_class: int = checked(at_least(1), STAGE1_SYNTHETIC_PER_CLASS)
    # stage 1's length in optimiser steps (whole epochs); null: trainer.max_epochs. An experiment keys it by stage
    # (finetune: null); stage 2 refuses a number (rules.train_steps_sizes_stage_1).
    train_steps: int | None = checked(at_least(1), None)
    optim: Optim = field(default_factory=Optim)
    paths: Paths = field(default_factory=Paths)
    model: Any = builds()
    dataset: Any = builds()
    trainer: Any = builds()
    logger: Any = builds(required=False)
    callbacks: Any = builds(BUILDS_MANY, required=False)


# ---- stage 1 ------------------------------------------------------------------------------------------------------


@dataclass
class Head:
    """pretrain_task=classification: global pooling, then FC layers with ReLU + dropout, then the logit(s)."""

    pooling: str = checked(raises(_pooling))
    hidden: list[int] = checked(_layer_widths)
    dropout: float = checked(lambda v: None if 0 <= v < 1 else f"must lie in [0, 1), got {v}")


@dataclass
class ClassificationPretrainTask:
    name: str = MISSING


@dataclass
class SegmentationLoss:
    """Stage 2's task (``task``), which pretrain_task=segmentation trains too."""

    bce_weight: float = checked(at_least(0))  # loss = bce_weight * BCE + dice_weight * soft Dice
    dice_weight: float = checked(at_least(0))
    threshold: float = checked(probability_threshold)  # probability above which a pixel is a defect
    empty_score: float = checked(between(0, 1))  # Dice of an image whose truth and prediction are both empty
    preview_images: int = checked(at_least(0))


@dataclass
class SegmentationPretrainTask(SegmentationLoss):
    name: str = MISSING
    save_decoder: bool = MISSING


@dataclass
class SelfSupervisedPretrainTask:
    name: str = MISSING
    mask_ratio: float = checked(between(0, 1, strict=True))
    patch_size: int = checked(at_least(1))
    normalize_target: bool = MISSING
    save_decoder: bool = MISSING
    preview_images: int = checked(at_least(0))


# conf/pretrain_task/<name>.yaml: each objective reads its own keys, so its schema follows pretrain_task.name.
PRETRAIN_TASKS: dict[str, type] = {
    "classification": ClassificationPretrainTask,
    "segmentation": SegmentationPretrainTask,
    "self_supervised": SelfSupervisedPretrainTask,
}


@dataclass
class Transfer:
    """``transfer`` (conf/transfer/*.yaml): the fine-tuning recipe. Its values are checked by the code that reads them,
    defectseg.models.freeze.TransferRecipe (rules.transfer_recipe), so each rule stays there."""

    name: str = MISSING
    freeze: str = MISSING  # at the start: scratch | encoder | none | partial
    freeze_depth: int | None = None
    unfreeze_at: float | None = None
    unfreeze_every: float | None = None
    encoder_lr_scale: float = MISSING
    level_lr_decay: float = MISSING
    warmup: float = MISSING


@dataclass
class Pretrain(TrainingStage):
    reuse: bool = MISSING  # use a finished stage 1 of this config in hydra.run.dir instead of training
    transfer: Transfer | None = None  # stage 2's recipe, present when experiment=paper picks it; stage 1 ignores it
    head: Head = field(default_factory=Head)
    pretrain_task: Any = field(default=MISSING, metadata={"schema_by_name": PRETRAIN_TASKS})


# ---- stage 2 ------------------------------------------------------------------------------------------------------


def _class_weights(value: Any) -> str | None:
    numbers = isinstance(value, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in value)
    return None if value == "frequency" or numbers else f"must be null, frequency or a list of numbers, got {value!r}"


@dataclass
class FinetuneTask(SegmentationLoss):
    # with dataset.classes: one weight per class ([1, 2, 4, 4]) or frequency (train pixels); the count is checked
    # where the classes are known (defectseg.training.losses.ClassesLoss)
    class_weights: Any = checked(_class_weights, None)


@dataclass
class Finetune(TrainingStage):
    pretrained_encoder: str | None = None  # a stage-1 run directory or its encoder.safetensors
    init_decoder: bool = MISSING  # the decoder from the stage-1 run's decoder.safetensors
    calibrate_features: bool = MISSING
    calibration_batches: int = checked(at_least(1))
    task: FinetuneTask = field(default_factory=FinetuneTask)
    transfer: Transfer = field(default_factory=Transfer)


# ---- using a model ------------------------------------------------------------------------------------------------


def _tile_layout(value: Any) -> None:
    from defectseg.predict import tile_layout

    tile_layout(OmegaConf.create({"layout": value, "tile_size": None, "margin": 0}), None)


@dataclass
class Tiling:
    layout: str = checked(raises(_tile_layout))  # fitted | grid
    tile_size: int | None = checked(at_least(1), None)
    margin: int = checked(at_least(0))  # fitted: px neighbouring tiles share
    overlap: float = checked(lambda v: None if 0 <= v < 1 else f"must lie in [0, 1), got {v}")
    batch_size: int = checked(at_least(1))


@dataclass
class SaveOutputs:
    overlay: bool = MISSING
    probability: str | None = checked(
        lambda v: None if v in ("none", "png", "npy") else f"save.probability must be none, png or npy, got {v}", None
    )
    report: bool = MISSING  # report.html


@dataclass
class PredictReport:
    title: str = MISSING
    preview_px: int = checked(at_least(1))  # longest side of the photo and overlay embedded in report.html


@dataclass
class Overlay:
    color: list[int] = MISSING
    alpha: float = checked(between(0, 1))
    contour_color: list[int] = MISSING
    labels: bool = MISSING
    max_labels: int = checked(at_least(0))


def _linear_classes(value: Any) -> None:
    from defectseg.inference.classes import resolve_linear

    if not isinstance(value, list):  # a list's names are checked against the model's classes
        resolve_linear(value, ())


@dataclass
class PredictClasses:
    """Models trained with dataset.classes; the class names are checked against the model's (inference/classes.py)."""

    masks: Any = checked(lambda v: None if isinstance(v, bool) else f"classes.masks must be true or false, got {v}")
    # classes measured for length and width; null: names with crack or scratch
    linear: Any = checked(raises(_linear_classes), None)


def _predict_threshold(value: Any) -> str | None:
    if isinstance(value, list):
        return None  # one per class: inference/classes.py's resolve_thresholds checks them against the model
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"must be a number between 0 and 1 (or a list, one per class), got {value!r}"
    problem = probability_threshold(value)
    return problem and f"threshold {problem}"  # as predict has always said it


@dataclass
class Predict:
    stage: str = MISSING
    input: str = field(
        default=MISSING,
        metadata={
            "check": lambda v: None if str(v).strip() else "is empty",
            "missing": "no input given: set input=PATH (a photo, a folder of photos, or a quoted glob such as "
            "input='photos/*.jpg')",
        },
    )
    recursive: bool = MISSING
    checkpoint: str | None = None
    output_dir: str | None = MISSING  # null under --cfg job --resolve (no run yet)
    device: str = MISSING
    precision: str = MISSING  # 32 | bf16, checked where a PyTorch checkpoint is loaded (inference/torch_runtime.py)
    # null: the model's own; a multilabel model: one for all classes or a list, one per class (checked with the model)
    threshold: Any = checked(_predict_threshold, None)
    scale: Any = checked(raises(_scale))  # auto | fit | a positive factor
    min_defect_area_px: Any = checked(raises(_min_area))  # auto | N px
    mm_per_px: float | None = checked(raises(_mm_per_px), None)
    mm_per_px_file: str | None = None  # a CSV with columns image,mm_per_px
    thin_min_elongation: float = checked(at_least(1))
    tiling: Tiling = field(default_factory=Tiling)
    classes: PredictClasses = field(default_factory=PredictClasses)
    save: SaveOutputs = field(default_factory=SaveOutputs)
    report: PredictReport = field(default_factory=PredictReport)
    overlay: Overlay = field(default_factory=Overlay)
    progress: bool = MISSING
    paths: Paths = field(default_factory=Paths)


@dataclass
class ExportCheck:
    atol: float = checked(positive)
    sample: str | None = None


@dataclass
class Export:
    stage: str = MISSING
    checkpoint: str | None = None
    output_dir: str | None = MISSING  # null under --cfg job --resolve (no run yet)
    formats: list[str] = MISSING
    opset: int = MISSING
    check: ExportCheck = field(default_factory=ExportCheck)
    paths: Paths = field(default_factory=Paths)


@dataclass
class CheckData:
    stage: str = MISSING
    stage1_synthetic_per_class: int = checked(at_least(1), STAGE1_SYNTHETIC_PER_CLASS)
    paths: Paths = field(default_factory=Paths)
    dataset: Any = builds()


# conf/<stage>.yaml -> its schema; the YAML's defaults list names it as <stage>_schema.
STAGES: dict[str, type] = {
    "pretrain": Pretrain,
    "finetune": Finetune,
    "predict": Predict,
    "export": Export,
    "check_data": CheckData,
}


def by_stage(values: Any, *, _root_: Any) -> Any:
    """``${by_stage:{pretrain: 3, finetune: 16}}``: an experiment's value for the stage running (its ``stage`` key)."""
    from defectseg.utils.errors import ConfigError

    stage = _root_.get("stage")
    if stage not in values:
        raise ConfigError(f"by_stage: no value for stage {stage} in {dict(values)}")
    return values[stage]


def register() -> None:
    """Every stage's schema into Hydra's ConfigStore and the ``by_stage`` resolver (idempotent; before composing)."""
    store = ConfigStore.instance()
    for stage, schema in STAGES.items():
        store.store(name=f"{stage}_schema", node=schema)
    if not OmegaConf.has_resolver("by_stage"):
        OmegaConf.register_new_resolver("by_stage", by_stage)
