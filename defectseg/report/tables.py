"""The report's text: the Table 1 markdown, the CSV files and the header a reader needs to trust the numbers."""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectseg.report.collect import stage1_facts
from defectseg.report.rows import MODE_ORDER, RECIPE_ORDER, ROW_IDENTITY, display_mode, none_last, varies
from defectseg.report.statistics import BOOTSTRAP_SEED, N_BOOTSTRAP, finite

#: report.csv: the row identity (a field added to ROW_IDENTITY gets its column), the mode label before the label
#: budget, then the figures.
REPORT_CSV_COLUMNS = [
    *(key for key in ROW_IDENTITY if key != "train_images"),
    "mode",
    "train_images",
    "trainable_params",
    "total_params",
    "n_seeds",
    "seeds",
    "val_dice_mean",
    "val_dice_std",
    "test_dice_mean",
    "test_dice_std",
    "gain_abs",
    "gain_pct",
    "ttest_p",
    "n_paired",
    "boot_ci_low",
    "boot_ci_high",
    "boot_n_images",
    "verdict",
    "best_epoch_mean",
    "epochs_mean",
    "train_seconds_mean",
    "train_images_per_second_mean",
    "device",
    "precision",
]

LABEL_EFF_CSV_COLUMNS = [
    "experiment",
    "dataset",
    "model",
    "pretrain_task",
    "encoder_from",
    "mode",
    "freeze",
    "freeze_depth",
    "train_images",
    "n_seeds",
    "test_dice_mean",
    "test_dice_std",
    "val_dice_mean",
    "val_dice_std",
    "gain_abs",
    "gain_pct",
    "verdict",
]

# Paper Table 1 (test Dice), quoted in report.md for context only.
_PAPER_REF = "paper Table 1 (test Dice): scratch 0.71 / 0.71 → transfer 0.79 / 0.77"


def _fmt(x: float | None, spec: str = ".3f", signed: bool = False) -> str:
    if x is None:
        return "–"
    return format(x, ("+" if signed else "") + spec)


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "p<0.001" if p < 1e-3 else f"p={p:.3f}"


def _fmt_params(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) and not isinstance(n, bool) else "–"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int((s % 3600) // 60):02d}m"


def _mean_std(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f} ± {_fmt(std)}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1-style markdown table (one row per group, mean ± sample std over seeds)."""
    cols = ["dataset"]
    if varies(rows, "experiment"):
        cols.insert(0, "experiment")
    if varies(rows, "model"):
        cols.append("model")
    cols += [
        "train imgs",
        "training",
        "trainable params",
        "n",
        "val DC",
        "test DC",
        "gain vs scratch",
        "paired t",
        "bootstrap 95% CI (Δ per image)",
        "verdict",
        "best ep",
        "train time",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        gain = (
            "–"
            if r["gain_abs"] is None
            else (f"{_fmt(r['gain_abs'], signed=True)} ({_fmt(r['gain_pct'], '.1f', signed=True)}%)")
        )
        ci = (
            "–"
            if r["boot_ci_low"] is None
            else (f"[{_fmt(r['boot_ci_low'], signed=True)}, {_fmt(r['boot_ci_high'], signed=True)}]")
        )
        cells = {
            "experiment": str(r["experiment"]),
            "dataset": str(r["dataset"]),
            "model": str(r["model"]),
            "train imgs": "–" if r["train_images"] is None else str(r["train_images"]),
            "training": display_mode(r, rows),
            "trainable params": _fmt_params(r["trainable_params"]),
            "n": str(r["n_seeds"]),
            "val DC": _mean_std(r["val_dice_mean"], r["val_dice_std"]),
            "test DC": _mean_std(r["test_dice_mean"], r["test_dice_std"]),
            "gain vs scratch": gain,
            "paired t": _fmt_p(r["ttest_p"]) + (f" (n={r['n_paired']})" if r["ttest_p"] is not None else ""),
            "bootstrap 95% CI (Δ per image)": ci,
            "verdict": r["verdict"] or "(reference)",
            "best ep": _fmt(r["best_epoch_mean"], ".0f"),
            "train time": _fmt_seconds(r["train_seconds_mean"]),
        }
        lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_value(r.get(c)) for c in columns})
    return buf.getvalue()


def describe_missing(m: dict[str, Any]) -> str:
    ov = " ".join(m["overrides"]) if m["overrides"] else "(overrides unknown)"
    where = f"`{m['job']}`" if m.get("job") else "(no dir)"
    return f"{where} {ov} — {m['reason']}"


def _summary_lines(sweep_dir: Path, runs: Sequence[dict[str, Any]], missing: Sequence[dict[str, Any]]) -> list[str]:
    """Header facts: experiment, machine, wall time, date; what a reader needs to trust Table 1."""
    experiments = sorted({str(r.get("experiment")) for r in runs if r.get("experiment")})
    devices = Counter(str(r.get("device")) for r in runs if r.get("device"))
    precisions = sorted({str(r.get("precision")) for r in runs if r.get("precision")})
    total = sum(v for v in (finite(r.get("train_seconds")) for r in runs) if v is not None)
    starts = [r["_times"][0] for r in runs if r.get("_times") and r["_times"][0] is not None]
    ends = [r["_times"][1] for r in runs if r.get("_times") and r["_times"][1] is not None]
    n_missing = sum(m.get("count", 1) for m in missing)
    span = ""
    longest = max((v for v in (finite(r.get("train_seconds")) for r in runs) if v is not None), default=0.0)
    # A span shorter than the longest job means the mtimes were reset by a copy: do not show it.
    if starts and ends and max(ends) - min(starts) >= longest:
        t0 = _dt.datetime.fromtimestamp(min(starts)).strftime("%Y-%m-%d %H:%M")
        t1 = _dt.datetime.fromtimestamp(max(ends)).strftime("%Y-%m-%d %H:%M")
        span = f"; span {_fmt_seconds(max(ends) - min(starts))} ({t0} → {t1})"
    dev = "; ".join(f"{d} ×{n}" if len(devices) > 1 else d for d, n in devices.most_common()) or "unknown"
    stage1 = stage1_facts(runs)
    return [
        f"- **Experiment:** {', '.join(experiments) or 'n/a'}",
        f"- **Sweep dir:** `{sweep_dir}`",
        *([f"- **Stage 1:** {'; '.join(stage1)}"] if stage1 else []),
        f"- **Machine:** {dev}" + (f" (precision: {', '.join(precisions)})" if precisions else ""),
        f"- **Wall time:** {_fmt_seconds(total)} total training time over {len(runs)} finished jobs{span}",
        f"- **Date:** {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} (report generated)",
        f"- **Jobs:** {len(runs)} finished, {n_missing} MISSING",
    ]


def markdown_report(
    sweep_dir: Path,
    rows: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    missing: Sequence[dict[str, Any]],
    images: Sequence[str],
    sections: Sequence[str] = (),
) -> str:
    exp = sorted({str(r.get("experiment")) for r in runs if r.get("experiment")})
    title = f"# Table 1 — scratch vs transfer: {', '.join(exp) or sweep_dir.name}"
    parts = [
        title,
        "",
        "U-Net segmentation Dice (DC), mean ± sample std (ddof=1) over seeds. "
        "Gain is relative to *scratch* of the same dataset, model and number of training "
        f"images. For context, {_PAPER_REF}.",
        "",
        *_summary_lines(sweep_dir, runs, missing),
        "",
        markdown_table(rows),
    ]
    parts += [section for section in sections if section]  # e.g. Dice per class (defectseg.report.classes)
    parts += ["## MISSING jobs", ""]
    if missing:
        parts += [f"- {describe_missing(m)}" for m in missing]
    else:
        parts.append("None: every job of the sweep finished.")
    parts += [
        "",
        "## Method",
        "",
        "- *paired t*: `scipy.stats.ttest_rel` on test Dice matched by seed (needs ≥ 2 seeds present in both modes).",
        f"- *bootstrap*: per-image test Dice averaged over seeds, difference mode − scratch, "
        f"{N_BOOTSTRAP:,} resamples of the test images (seed {BOOTSTRAP_SEED}), "
        'percentile 95% CI of the mean; verdict "gain is real" (or "loss is real") when the CI excludes 0.',
        "",
    ]
    for img in images:
        parts += [f"![{Path(img).stem}]({img})", ""]
    return "\n".join(parts)


def label_efficiency_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the (experiment, dataset, model) panels trained at two or more label budgets: a curve needs two points.

    Sets that differ only in size (crackforest's 82 images beside deepcrack's 175) make no curve.
    """
    sizes: dict[tuple[Any, ...], set[int]] = {}
    for r in rows:
        if r["train_images"] is not None:
            sizes.setdefault((r["experiment"], r["dataset"], r["model"]), set()).add(r["train_images"])
    keep = [
        r for r in rows if r["train_images"] is not None and len(sizes[(r["experiment"], r["dataset"], r["model"])]) > 1
    ]
    return sorted(
        keep,
        key=lambda r: (
            none_last(r["experiment"]),
            none_last(r["dataset"]),
            none_last(r["model"]),
            RECIPE_ORDER.get(r.get("transfer"), 99),
            MODE_ORDER.get(r["freeze"], 9),
            none_last(r["freeze_depth"]),
            none_last(r.get("transfer_settings")),
            none_last(r["pretrain_task"]),
            r["train_images"],
        ),
    )
