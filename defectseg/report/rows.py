"""Row identity: which runs are seeds of one table row, how a row is named and where it sorts.

Everything that decides what a row *is* lives here, so a new axis of comparison (a fine-tuning recipe, a per-class
column set) is added in one place: append its recorded field to :data:`ROW_IDENTITY`, and name it in
:func:`mode_label` / :func:`display_mode` when it should show in the "training" column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Display order of freeze modes (scratch first: it is the reference of every gain).
MODE_ORDER = {"scratch": 0, "encoder": 1, "partial": 2, "none": 3}

#: Transfer recipes (conf/transfer/*.yaml), in display order, with their labels; runs from before the recipes
#: recorded only a freeze mode, which names the recipe it was (RECIPE_OF_FREEZE).
RECIPE_LABELS = {
    "scratch": "scratch",
    "frozen_encoder": "transfer-frozen encoder",
    "partial_frozen": "partial",
    "full_finetune": "transfer-full fine-tuning",
    "staged": "staged (frozen, then full)",
    "gradual": "gradual unfreezing",
    "discriminative": "discriminative lr",
}
RECIPE_ORDER = {name: index for index, name in enumerate(RECIPE_LABELS)}
RECIPE_OF_FREEZE = {
    "scratch": "scratch",
    "encoder": "frozen_encoder",
    "partial": "partial_frozen",
    "none": "full_finetune",
}
#: The recipe settings (with their plain fine-tuning values) that make two runs of one recipe name different rows
#: (``transfer.unfreeze_at=0.5`` vs 0.25).
RECIPE_SETTINGS = {
    "unfreeze_at": None,
    "unfreeze_every": None,
    "encoder_lr_scale": 1.0,
    "level_lr_decay": 1.0,
    "warmup": 0.0,
}

#: The fields each run recorded (metrics.json) that name its row: runs equal on all of them are seeds of one row.
ROW_IDENTITY = (
    "experiment",
    "dataset",
    "model",
    "pretrain_task",
    "encoder_from",
    "freeze",
    "freeze_depth",
    "transfer",
    "transfer_settings",
    "init_decoder",
    "classes",
    "train_images",
    "weight_averaging",
)

#: Fields a transfer row and its scratch reference must share (a gain compares like with like).
REFERENCE_IDENTITY = ("dataset", "model", "classes", "train_images")


def row_identity(run: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a run (or row), as the row will carry them."""
    identity = {key: run.get(key) for key in ROW_IDENTITY}
    identity["init_decoder"] = bool(identity["init_decoder"])
    if isinstance(identity["classes"], (list, tuple)):  # dataset.classes of a multi-class run; None when binary
        identity["classes"] = ",".join(str(name) for name in identity["classes"])
    return identity


def row_key(run: dict[str, Any]) -> tuple[Any, ...]:
    """Hashable row identity: the runs with one key are averaged over their seeds."""
    return tuple(row_identity(run).values())


def none_last(value: Any) -> tuple[bool, Any]:
    """Sort key that tolerates None mixed with comparable values."""
    return (value is None, value if value is not None else 0)


def row_sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Table order: by data set and size, then scratch first and the transfer modes after it."""
    return (
        none_last(row["experiment"]),
        none_last(row["dataset"]),
        none_last(row["model"]),
        none_last(row["train_images"]),
        RECIPE_ORDER.get(row.get("transfer"), 99),
        none_last(row.get("transfer")),
        none_last(row.get("transfer_settings")),
        MODE_ORDER.get(row["freeze"], 9),
        none_last(row["freeze_depth"]),
        none_last(row["pretrain_task"]),
        none_last(row.get("encoder_from")),
        row.get("init_decoder", False),
    )


def recipe_of(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """A run's transfer recipe and its settings that differ from plain fine-tuning (``unfreeze_at=0.25``);
    older runs, without a recipe: the recipe their freeze mode was."""
    name = run.get("transfer") or RECIPE_OF_FREEZE.get(run.get("freeze"))
    recipe = run.get("transfer_recipe")
    if not isinstance(recipe, dict):
        return name, None
    changed = [f"{key}={recipe[key]:g}" for key, plain in RECIPE_SETTINGS.items() if recipe.get(key, plain) != plain]
    return name, ", ".join(changed) or None


def mode_label(
    freeze: str | None, freeze_depth: int | None = None, init_decoder: bool = False, transfer: str | None = None
) -> str:
    """Human label of a transfer recipe (or, for runs without one, a freeze mode) in the table and the plots."""
    if init_decoder:
        return f"{mode_label(freeze, freeze_depth, transfer=transfer)} + stage-1 decoder"
    if transfer in RECIPE_LABELS and transfer not in ("scratch", "frozen_encoder", "partial_frozen", "full_finetune"):
        return RECIPE_LABELS[transfer]
    if transfer is not None and transfer not in RECIPE_LABELS:
        return str(transfer)
    if freeze == "scratch":
        return "scratch"
    if freeze == "encoder":
        return "transfer-frozen encoder"
    if freeze == "none":
        return "transfer-full fine-tuning"
    if freeze == "partial":
        return f"partial-{freeze_depth}" if freeze_depth is not None else "partial"
    return str(freeze)


def display_mode(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """Mode label, plus the pretraining task and the stage-1 run when the sweep compares several, and the weight
    averaging (callbacks=ema) when the run had one."""
    averaged = f" + {row['weight_averaging']}" if row.get("weight_averaging") else ""
    return _tagged_mode(row, rows) + averaged


def _tagged_mode(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    if row["freeze"] == "scratch":
        return row["mode"]
    transfer = [r for r in rows if r["freeze"] != "scratch"]
    tags = [str(row[key]) for key in ("pretrain_task", "encoder_from") if len({r.get(key) for r in transfer}) > 1]
    same_recipe = [r for r in transfer if r.get("transfer") == row.get("transfer")]
    if row.get("transfer_settings") and len({r.get("transfer_settings") for r in same_recipe}) > 1:
        tags.append(str(row["transfer_settings"]))
    return f"{row['mode']} [{', '.join(tags)}]" if tags else row["mode"]


def varies(rows: Sequence[dict[str, Any]], key: str) -> bool:
    """Whether the rows differ in ``key`` (then it earns a column or a panel)."""
    return len({r[key] for r in rows}) > 1
