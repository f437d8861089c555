"""Rules that tie keys together, each in one place; run once every key is known to be well typed.

A rule appends a problem that starts with the keys it names (``reuse, ckpt_path: ...``). Rules about one key alone
belong to that key's schema field (schemas.py) or to the constructor that takes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def check(values: Mapping[str, Any], problems: list[str]) -> None:
    for rule in (
        split_fractions,
        image_size_fits_model,
        transfer_recipe,
        freeze_depth_fits_model,
        patches_fit_image,
        loss_weights,
        one_starting_point,
        train_steps_sizes_stage_1,
    ):
        rule(values, problems)


def section(values: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    found = values.get(key)
    return found if isinstance(found, Mapping) else {}


def split_fractions(values: Mapping[str, Any], problems: list[str]) -> None:
    """Before a synthetic set is generated for a split that cannot be made (the data module checks it again)."""
    fractions = section(values, "dataset").get("split_fractions")
    if isinstance(fractions, (list, tuple)):
        from defectseg.config.schemas import raises
        from defectseg.data.splits import check_fractions

        if problem := raises(check_fractions)(fractions):
            problems.append(problem)


def model_geometry(model: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input side multiple, encoder levels) for the models whose geometry the config determines."""
    if model.get("_target_") in ("defectseg.models.unet_paper", "defectseg.models.segmentation.unet_paper"):
        from defectseg.models.segmentation import unet_paper
        from defectseg.models.unet_paper import input_multiple

        channels = model.get("channels") or inspect.signature(unet_paper).parameters["channels"].default
        if isinstance(channels, (list, tuple)) and channels:
            return input_multiple(channels), len(channels)
    return None, None


def image_size_fits_model(values: Mapping[str, Any], problems: list[str]) -> None:
    model = section(values, "model")
    multiple, levels = model_geometry(model)
    size = section(values, "dataset").get("image_size")
    if multiple and isinstance(size, int) and size % multiple:
        below, above = size - size % multiple, size - size % multiple + multiple
        problems.append(
            f"dataset.image_size: {size} is not divisible by {multiple}, which {model.get('_target_')} needs "
            f"(its {levels} levels halve the image {levels - 1} times); use {below or above} or {above}"
        )


def transfer_recipe(values: Mapping[str, Any], problems: list[str]) -> None:
    """Stage 2's recipe, by the code that runs it (defectseg.models.freeze.TransferRecipe: freeze mode, shares, rates);
    stage 1 carries a recipe only when experiment=paper picks one, and ignores it."""
    transfer = section(values, "transfer")
    if values.get("stage") == "finetune" and transfer and not any(p.startswith("transfer.") for p in problems):
        from defectseg.config.schemas import raises
        from defectseg.models.freeze import TransferRecipe

        if problem := raises(TransferRecipe.from_config)(transfer):
            problems.append(problem)


def freeze_depth_fits_model(values: Mapping[str, Any], problems: list[str]) -> None:
    transfer = section(values, "transfer")
    depth = transfer.get("freeze_depth")
    _, levels = model_geometry(section(values, "model"))
    partial = values.get("stage") == "finetune" and transfer.get("freeze") == "partial"
    if partial and levels and isinstance(depth, int) and depth > levels:
        problems.append(f"transfer.freeze_depth: {depth} exceeds the encoder's {levels} levels")


def patches_fit_image(values: Mapping[str, Any], problems: list[str]) -> None:
    task = section(values, "pretrain_task")
    patch, size = task.get("patch_size"), section(values, "dataset").get("image_size")
    if task.get("name") == "self_supervised" and isinstance(patch, int) and isinstance(size, int) and size % patch:
        problems.append(
            f"pretrain_task.patch_size: {patch} does not divide dataset.image_size={size} into whole patches"
        )


def loss_weights(values: Mapping[str, Any], problems: list[str]) -> None:
    """loss = bce_weight * BCE + dice_weight * soft Dice (defectseg/training/losses.py) needs one of them."""
    for name in ("task", "pretrain_task"):
        weights = section(values, name)
        if weights.get("bce_weight", 1) == 0 and weights.get("dice_weight", 1) == 0:
            problems.append(f"{name}.bce_weight, {name}.dice_weight: both are 0, so there is nothing to learn from")


def one_starting_point(values: Mapping[str, Any], problems: list[str]) -> None:
    ckpt_path = values.get("ckpt_path")
    if ckpt_path in (None, "last"):
        return
    if values.get("reuse"):
        problems.append(
            f"reuse, ckpt_path: reuse=true keeps (or continues) the run in this directory, ckpt_path={ckpt_path} "
            "starts from another checkpoint; set one of them"
        )
    if values.get("resume"):
        problems.append(
            f"resume, ckpt_path: resume=true continues this run directory's last.ckpt, ckpt_path={ckpt_path} "
            "another checkpoint; set one of them"
        )


def train_steps_sizes_stage_1(values: Mapping[str, Any], problems: list[str]) -> None:
    if values.get("stage") == "finetune" and values.get("train_steps") is not None:
        problems.append(
            f"train_steps={values['train_steps']}: sizes stage 1 (defectseg.pretrain) in optimiser steps; "
            "stage 2 is sized by trainer.max_epochs"
        )
