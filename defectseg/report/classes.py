"""Dice per defect class (runs with ``dataset.classes``): per row and class the mean over seeds, and for each
transfer row the gain over its scratch reference: the mean per-image difference over the test images where both
runs score the class (in the truth, or predicted by both), with its paired bootstrap CI. An image with the class in
neither says nothing about it; one where only one run predicts it would compare a score with nothing. The gain is
therefore not the difference of the two rows' class Dice (each averages over its own images), but always lies in
its CI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectseg.report.rows import ROW_IDENTITY, display_mode
from defectseg.report.statistics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    VERDICT_GAIN,
    VERDICT_LOSS,
    VERDICT_NS,
    _mean,
    _std,
    finite,
    paired_bootstrap_ci,
    scratch_reference,
)

CLASS_CSV_COLUMNS = [
    *(key for key in ROW_IDENTITY if key != "train_images"),
    "mode",
    "train_images",
    "class",
    "n_seeds",
    "test_dice_mean",
    "test_dice_std",
    "gain_abs",
    "boot_ci_low",
    "boot_ci_high",
    "boot_n_images",
    "verdict",
]


def class_names(row: dict[str, Any]) -> list[str]:
    return [name for name in str(row.get("classes") or "").split(",") if name]


def _per_image(runs: Sequence[dict[str, Any]], name: str) -> np.ndarray | None:
    """Per-image Dice of one class averaged over seeds (NaN where no seed has the class in truth or prediction)."""
    vectors = []
    for run in runs:
        values = (run.get("test_dice_per_image_per_class") or {}).get(name)
        if isinstance(values, list) and values:
            vectors.append(np.array([np.nan if v is None else float(v) for v in values]))
    if not vectors or len({v.size for v in vectors}) != 1:
        return None
    stacked = np.stack(vectors)
    counts = (~np.isnan(stacked)).sum(axis=0)
    return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def class_rows(
    rows: Sequence[dict[str, Any]], n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> list[dict[str, Any]]:
    """One entry per (table row, class) of the multi-class rows, in table order."""
    out: list[dict[str, Any]] = []
    for row in rows:
        names = class_names(row)
        if not names:
            continue
        ref = scratch_reference(row, rows) if row["freeze"] != "scratch" else None
        for name in names:
            values = [finite((r.get("test_dice_per_class") or {}).get(name)) for r in row["_runs"]]
            values = [v for v in values if v is not None]
            entry = {
                **{key: row[key] for key in ROW_IDENTITY},
                "mode": display_mode(row, rows),
                "class": name,
                "n_seeds": len(values),
                "test_dice_mean": _mean(values),
                "test_dice_std": _std(values),
                "gain_abs": None,
                "boot_ci_low": None,
                "boot_ci_high": None,
                "boot_n_images": 0,
                "verdict": None if ref is None else "n/a (no matching per-image Dice)",
            }
            if ref is not None:
                base = [finite((r.get("test_dice_per_class") or {}).get(name)) for r in ref["_runs"]]
                base = [v for v in base if v is not None]
                if values and base:  # without per-image scores: the difference of the class Dice
                    entry["gain_abs"] = float(np.mean(values) - np.mean(base))
                mine, theirs = _per_image(row["_runs"], name), _per_image(ref["_runs"], name)
                if mine is not None and theirs is not None and mine.size == theirs.size:
                    both = ~np.isnan(mine) & ~np.isnan(theirs)
                    if both.any():
                        differences = mine[both] - theirs[both]
                        low, high = paired_bootstrap_ci(differences, n_resamples=n_resamples, seed=seed)
                        entry.update(boot_ci_low=low, boot_ci_high=high, boot_n_images=int(both.sum()))
                        entry["gain_abs"] = float(differences.mean())
                        entry["verdict"] = VERDICT_GAIN if low > 0 else VERDICT_LOSS if high < 0 else VERDICT_NS
            out.append(entry)
    return out


def markdown_class_table(entries: Sequence[dict[str, Any]]) -> str:
    """Rows: dataset x training; columns: the classes; cells: test Dice mean ± std, and gain [95% CI] for transfer."""
    if not entries:
        return ""
    names: list[str] = []
    for entry in entries:
        if entry["class"] not in names:
            names.append(entry["class"])
    grouped: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for entry in entries:
        key = (entry["dataset"], entry["train_images"], entry["mode"])
        grouped.setdefault(key, {})[entry["class"]] = entry
    lines = [
        "## Dice per class",
        "",
        "Test Dice per class, mean ± std over seeds; transfer rows add the gain over scratch, the mean per-image "
        "difference over the test images where both score the class, and its paired bootstrap 95% CI (* when it "
        "excludes 0).",
        "",
        "| dataset | train imgs | training | " + " | ".join(names) + " |",
        "|" + "|".join("---" for _ in range(3 + len(names))) + "|",
    ]
    for (dataset, train_images, mode), by_class in grouped.items():
        cells = [_cell(by_class.get(name)) for name in names]
        lines.append(
            f"| {dataset} | {'–' if train_images is None else train_images} | {mode} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["test_dice_mean"] is None:
        return "–"
    std = "–" if entry["test_dice_std"] is None else f"{entry['test_dice_std']:.3f}"
    text = f"{entry['test_dice_mean']:.3f} ± {std}"
    if entry["gain_abs"] is not None:
        text += f" ({entry['gain_abs']:+.3f}"
        if entry["boot_ci_low"] is not None:
            star = "*" if entry["verdict"] in (VERDICT_GAIN, VERDICT_LOSS) else ""
            text += f" [{entry['boot_ci_low']:+.3f}, {entry['boot_ci_high']:+.3f}]{star}"
        text += ")"
    return text
