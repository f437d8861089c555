"""Why a recipe gains what it gains: learning curves (val Dice per epoch) and how far stage 2 moved each encoder level.

Both come from fields stage 2 writes to metrics.json (``val_dice_by_epoch``, ``encoder_level_change``); runs written
before those fields existed are left out of these sections, never guessed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectseg.report.plots import mode_colours, new_figure, save_figure
from defectseg.report.rows import display_mode

# The epochs the table quotes, as shares of the run: where transfer's head start shows, and whether scratch catches up
CURVE_POINTS = (0.1, 0.25, 0.5, 1.0)


def _panel(row: dict[str, Any]) -> str:
    size = "all" if row.get("train_images") is None else str(row["train_images"])
    return f"{row.get('dataset')} / {size} train imgs"


def _mean_curve(runs: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Mean val Dice per epoch over the seeds that recorded one; epochs not reached by every seed are cut."""
    curves = [r["val_dice_by_epoch"] for r in runs if isinstance(r.get("val_dice_by_epoch"), list)]
    curves = [[math.nan if v is None else float(v) for v in c] for c in curves if c]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    return np.nanmean(np.array([c[:length] for c in curves]), axis=0)


def _mean_levels(runs: Sequence[dict[str, Any]]) -> list[float] | None:
    levels = [r["encoder_level_change"] for r in runs if isinstance(r.get("encoder_level_change"), list)]
    if not levels or len({len(x) for x in levels}) != 1:
        return None
    return [float(v) for v in np.mean(np.array(levels, dtype=float), axis=0)]


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Val Dice per epoch, mean over seeds, one line per recipe, one panel per data set and label budget; None when
    no run recorded a curve."""
    curves = [(row, _mean_curve(row["_runs"])) for row in rows]
    curves = [(row, curve) for row, curve in curves if curve is not None]
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    colours = mode_colours(rows)
    panels: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
    for row, curve in curves:
        panels.setdefault(_panel(row), []).append((row, curve))
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig = new_figure(5.2 * columns + 1.5, 3.8 * lines)
    for index, (panel, entries) in enumerate(panels.items()):
        ax = fig.add_subplot(lines, columns, index + 1)
        for row, curve in entries:
            label = display_mode(row, rows)
            ax.plot(np.arange(1, curve.size + 1), curve, "-", color=colours[label], lw=1.8, label=label)
        ax.set_title(panel, fontsize=10, loc="left")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("val Dice (mean over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle("Learning curves: where transfer's head start shows, and whether scratch catches up", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def markdown_diagnostics(rows: Sequence[dict[str, Any]]) -> str:
    """The report's 'Why' section: val Dice along the run and the encoder's movement per level, per row."""
    table_rows = []
    depth = 0
    for row in rows:
        curve, levels = _mean_curve(row["_runs"]), _mean_levels(row["_runs"])
        if curve is None and levels is None:
            continue
        depth = max(depth, len(levels or []))
        table_rows.append((row, curve, levels))
    if not table_rows:
        return ""
    point_names = [f"{share:.0%}" for share in CURVE_POINTS]
    level_names = [f"L{i + 1}" for i in range(depth)]
    header = ["data set", "recipe", *[f"val @ {name}" for name in point_names], *level_names]
    lines = [
        "## Why: learning curves and encoder levels",
        "",
        "Val Dice (mean over seeds) at a share of the epochs, and how far stage 2 moved each encoder level from where "
        "it started (‖W − W₀‖ / ‖W₀‖ at the best epoch, %; L1 is the shallowest): the stage-1 weights for a transfer "
        "recipe, the random init for scratch. A pretrained level moved about as far as scratch moves its random one "
        "was rewritten, so it carried little the target could use; a head start at 10 % that is gone at 100 % is "
        "a faster start, not a better model. Curves: learning_curves.png.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row, curve, levels in table_rows:
        points = []
        for share in CURVE_POINTS:
            if curve is None:
                points.append("–")
                continue
            value = curve[max(0, math.ceil(share * curve.size) - 1)]
            points.append("–" if math.isnan(value) else f"{value:.3f}")
        moved = [f"{100 * v:.1f}" for v in levels] if levels else []
        moved += ["–"] * (depth - len(moved))
        lines.append("| " + " | ".join([_panel(row), display_mode(row, rows), *points, *moved]) + " |")
    return "\n".join(lines) + "\n"
