"""The report's figures: test Dice per mode (compare.png) and test Dice against the label budget (label_efficiency.png).

Figures are drawn without pyplot (no global backend switch, no figure leak in a long process) and with a fixed
jitter, so a report run twice draws the same picture.
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectseg.report.rows import MODE_ORDER, display_mode, none_last, varies
from defectseg.report.statistics import VERDICT_GAIN, VERDICT_LOSS
from defectseg.report.tables import label_efficiency_rows
from defectseg.utils.io import atomic_write_bytes

# One hue per freeze mode (scratch grey, frozen blue, full fine-tuning orange, partial green); each further
# starting point of the same mode (another pretrain task, a stage-1 decoder) takes the next shade of that hue.
_MODE_SHADES = {
    "scratch": ["#8c8c8c", "#bdbdbd", "#636363", "#d9d9d9"],
    "encoder": ["#1f77b4", "#6baed6", "#08519c", "#9ecae1", "#3182bd", "#08306b"],
    "none": ["#ff7f0e", "#fdae6b", "#a63603", "#fdd0a2", "#e6550d", "#7f2704"],
    "partial": ["#2ca02c", "#74c476", "#006d2c", "#a1d99b", "#31a354", "#00441b"],
}
_EXTRA_COLOURS = [
    "#9467bd",
    "#d62728",
    "#17becf",
    "#bcbd22",
    "#e377c2",
    "#8c564b",
    "#c5b0d5",
    "#ff9896",
    "#9edae5",
    "#dbdb8d",
    "#f7b6d2",
    "#c49c94",
]


def new_figure(width: float, height: float) -> Any:
    """Figure without pyplot: no global backend switch, no figure leak in long processes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def mode_colours(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A distinct, stable colour per displayed mode; shades of one hue share a freeze mode."""
    labels = sorted(
        {
            (display_mode(r, rows), r["freeze"], none_last(r.get("pretrain_task")), bool(r.get("init_decoder")))
            for r in rows
        },
        key=lambda t: (MODE_ORDER.get(t[1], 9), t[2], t[3], t[0]),
    )
    out: dict[str, str] = {}
    spare = iter(_EXTRA_COLOURS)
    for label, freeze, _task, _decoder in labels:
        taken = set(out.values())
        col = next((c for c in _MODE_SHADES.get(freeze, []) if c not in taken), None)
        if col is None:
            col = next((c for c in spare if c not in taken), None)
        if col is None:  # more modes than named colours: evenly spaced hues, still distinct
            r, g, b = colorsys.hsv_to_rgb((len(out) * 0.618034) % 1.0, 0.65, 0.8)
            col = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
        out[label] = col
    return out


def _panel_and_group(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Panel per dataset when sizes vary (groups = sizes), else one panel grouped by dataset."""
    ident = [str(row[k]) for k in ("experiment", "dataset", "model") if varies(rows, k) or k == "dataset"]
    if varies(rows, "train_images"):
        size = "?" if row["train_images"] is None else str(row["train_images"])
        return " / ".join(ident), f"{size} train imgs"
    return "", "\n".join(ident)


def _legend_handles(colours: dict[str, str]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(facecolor=c, edgecolor="black", linewidth=0.6, label=f"{m} (test, mean ± std)")
        for m, c in colours.items()
    ]
    handles.append(Line2D([], [], ls="none", marker="o", ms=4, color="black", alpha=0.75, label="seed (test Dice)"))
    handles.append(
        Line2D(
            [],
            [],
            ls="none",
            marker="D",
            ms=6,
            markerfacecolor="white",
            markeredgecolor="#444444",
            markeredgewidth=1.5,
            label="val Dice (mean)",
        )
    )
    return handles


def _draw_bars(
    ax: Any,
    groups: dict[str, list[dict[str, Any]]],
    rows: Sequence[dict[str, Any]],
    colours: dict[str, str],
    n_bars: int,
) -> None:
    width = 0.8 / n_bars
    rng = np.random.default_rng(0)  # fixed jitter: identical figure on every report run
    top = 0.0
    small = n_bars * len(groups) > 9
    for gi, grows in enumerate(groups.values()):
        for bi, r in enumerate(grows):
            x = gi + (bi - (len(grows) - 1) / 2) * width
            col = colours[display_mode(r, rows)]
            mean, std = r["test_dice_mean"], r["test_dice_std"] or 0.0
            ax.bar(x, mean, width * 0.9, color=col, edgecolor="black", linewidth=0.6, zorder=2)
            ax.errorbar(x, mean, yerr=std, fmt="none", ecolor="black", capsize=4, lw=1.2, zorder=3)
            pts = np.asarray(r["test_dice_values"], dtype=float)
            jitter = rng.uniform(-width * 0.22, width * 0.22, size=pts.size)
            ax.scatter(x + jitter, pts, s=14, color="black", alpha=0.75, zorder=4)
            if r["val_dice_mean"] is not None:
                ax.scatter(
                    [x],
                    [r["val_dice_mean"]],
                    marker="D",
                    s=34,
                    facecolor="white",
                    edgecolor=col if r["freeze"] != "scratch" else "#444444",
                    linewidth=1.6,
                    zorder=5,
                )
            hi = max(mean + std, float(pts.max()) if pts.size else mean, r["val_dice_mean"] or 0.0)
            text = f"{mean:.3f}"
            if r["gain_abs"] is not None:
                text += f"\n{r['gain_abs']:+.3f}" + ("*" if r["verdict"] in (VERDICT_GAIN, VERDICT_LOSS) else "")
            ax.text(
                x, hi + 0.015, text, ha="center", va="bottom", fontsize=7 if small else 8.5, fontweight="bold", zorder=6
            )
            top = max(top, hi)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=9)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0.0, max(1.05, top + 0.14))
    ax.set_ylabel("Dice coefficient")
    ax.yaxis.grid(True, alpha=0.3, zorder=0)
    ax.set_axisbelow(True)


def plot_compare(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Grouped bars of test Dice (mean ± std) per dataset/size, one colour per mode."""
    path = Path(path)
    colours = mode_colours(rows)
    panels: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        panel, group = _panel_and_group(r, rows)
        panels.setdefault(panel, {}).setdefault(group, []).append(r)
    n_groups = max(len(g) for g in panels.values())
    n_bars = max(len(b) for g in panels.values() for b in g.values())
    fig = new_figure(max(6.0, 1.0 + n_groups * (0.5 + 0.6 * n_bars)), 0.6 + 4.4 * len(panels))
    for pi, (panel, groups) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, pi + 1)
        _draw_bars(ax, groups, rows, colours, n_bars)
        if panel:
            ax.set_title(panel, fontsize=10, loc="left")
    n_seeds = sorted({r["n_seeds"] for r in rows})
    seeds_txt = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    fig.suptitle(
        title or f"Test Dice: scratch vs transfer (mean ± std over {seeds_txt} seeds)", fontsize=12, fontweight="bold"
    )
    fig.legend(
        handles=_legend_handles(colours), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.93), frameon=False
    )
    fig.tight_layout()
    if any(r["gain_abs"] is not None for r in rows):
        fig.text(
            0.01,
            -0.01,
            "bar label: test Dice mean and absolute gain vs scratch (* = bootstrap 95% CI excludes 0)",
            fontsize=7.5,
            color="#444444",
            va="top",
        )
    save_figure(fig, path)
    return path


def plot_label_efficiency(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Test Dice vs number of labelled images (log x): how much labelling transfer saves."""
    path = Path(path)
    rows = label_efficiency_rows(rows)
    colours = mode_colours(rows)
    panels: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["experiment"], r["dataset"], r["model"]), []).append(r)
    fig = new_figure(6.2 * len(panels) + 1.8, 4.8)
    sizes = sorted({r["train_images"] for r in rows})
    for pi, ((exp, dataset, model), prow) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), pi + 1)
        lines: dict[str, list[dict[str, Any]]] = {}
        for r in prow:
            lines.setdefault(display_mode(r, rows), []).append(r)
        for label, lrows in lines.items():
            lrows = sorted(lrows, key=lambda r: r["train_images"])
            xs = np.array([r["train_images"] for r in lrows], dtype=float)
            ys = np.array([r["test_dice_mean"] for r in lrows])
            sd = np.array([r["test_dice_std"] or 0.0 for r in lrows])
            col = colours[label]
            ax.plot(xs, ys, "-o", color=col, lw=2, ms=5, label=label, zorder=3)
            ax.fill_between(xs, ys - sd, ys + sd, color=col, alpha=0.18, lw=0, zorder=1)
            for r in lrows:
                pts = np.asarray(r["test_dice_values"])
                ax.scatter(
                    np.full(pts.size, float(r["train_images"])) * (1 + np.linspace(-0.03, 0.03, pts.size)),
                    pts,
                    s=10,
                    color=col,
                    alpha=0.55,
                    edgecolor="none",
                    zorder=2,
                )
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images (log scale)")
        ax.set_ylabel("test Dice (mean ± std over seeds)")
        ax.grid(True, alpha=0.3)
        name = " / ".join(str(p) for p in (exp, dataset, model) if p is not None)
        ax.set_title(f"Label efficiency: {name}", fontsize=10.5)
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
    return path
