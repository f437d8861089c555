"""Collect, aggregate and write every report file: the one entry point for code (:func:`write_report`) and CLI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectseg.report.classes import CLASS_CSV_COLUMNS, class_rows, markdown_class_table
from defectseg.report.collect import collect_runs
from defectseg.report.diagnostics import markdown_diagnostics, plot_learning_curves
from defectseg.report.plots import plot_compare, plot_label_efficiency
from defectseg.report.statistics import aggregate
from defectseg.report.tables import (
    LABEL_EFF_CSV_COLUMNS,
    REPORT_CSV_COLUMNS,
    csv_text,
    describe_missing,
    label_efficiency_rows,
    markdown_report,
    markdown_table,
)
from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_text

USAGE = """Aggregate a Hydra multirun comparison sweep (scratch vs transfer) into the paper's Table 1.

Reads SWEEP_DIR/multirun.yaml and every job directory (SWEEP_DIR/<job>/ or one level deeper, e.g.
SWEEP_DIR/label_efficiency/3/) holding .hydra/ and, once finished, metrics.json. Writes report.csv, report.md,
compare.png, learning_curves.png (val Dice per epoch) and, when the sweep varies the number of labelled training
images, label_efficiency.csv and label_efficiency.png. Jobs without metrics.json are reported as MISSING, never
dropped silently, so a partial sweep still gives an honest report.
"""


class ReportError(UserError, RuntimeError):
    """Raised when no report can be made (missing sweep dir, no finished job): one line, like every user error."""


def write_report(
    sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, plots: bool = True
) -> dict[str, Any]:
    """Collect, aggregate and write every report file; the single entry point for code and CLI.

    Returns ``{"paths": {name: Path}, "rows": [...], "missing": [...], "runs": [...],
    "markdown": str, "table": str}``.  Raises ReportError when the sweep dir is absent or holds no
    finished job.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"sweep directory does not exist: {root}")
    runs, missing = collect_runs(root)
    if not runs:
        n_jobs = sum(1 for m in missing if m.get("job_dir"))
        raise ReportError(f"no finished job (metrics.json with test_dice) in {root} ({n_jobs} job dirs found)")
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    paths: dict[str, Path] = {}
    paths["report.csv"] = out / "report.csv"
    atomic_write_text(paths["report.csv"], csv_text(rows, REPORT_CSV_COLUMNS))
    images: list[str] = []
    curve_rows = label_efficiency_rows(rows)
    if curve_rows:
        paths["label_efficiency.csv"] = out / "label_efficiency.csv"
        atomic_write_text(paths["label_efficiency.csv"], csv_text(curve_rows, LABEL_EFF_CSV_COLUMNS))
    if plots:
        paths["compare.png"] = plot_compare(rows, out / "compare.png")
        images.append("compare.png")
        if curve_rows:
            paths["label_efficiency.png"] = plot_label_efficiency(curve_rows, out / "label_efficiency.png")
            images.append("label_efficiency.png")
        learning = plot_learning_curves(rows, out / "learning_curves.png")
        if learning is not None:
            paths["learning_curves.png"] = learning
            images.append("learning_curves.png")
    per_class = class_rows(rows)
    if per_class:  # runs with dataset.classes: Dice and gains per class
        paths["report_classes.csv"] = out / "report_classes.csv"
        atomic_write_text(paths["report_classes.csv"], csv_text(per_class, CLASS_CSV_COLUMNS))
    markdown = markdown_report(
        root, rows, runs, missing, images, sections=[markdown_class_table(per_class), markdown_diagnostics(rows)]
    )
    paths["report.md"] = out / "report.md"
    atomic_write_text(paths["report.md"], markdown)
    public_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {
        "paths": paths,
        "rows": public_rows,
        "missing": missing,
        "runs": runs,
        "markdown": markdown,
        "table": markdown_table(rows),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 when a report was written (even with missing jobs), 2 when none could be."""
    parser = argparse.ArgumentParser(
        prog="python -m defectseg.report",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", help="Hydra multirun sweep directory (holds multirun.yaml and job dirs)")
    parser.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(argv)
    try:
        result = write_report(args.sweep_dir, args.out, plots=not args.no_plots)
    except UserError as exc:  # the one-line treatment of every entry point (defectseg.utils.errors)
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(result["table"], end="")
    missing = result["missing"]
    if missing:
        n_missing = sum(m.get("count", 1) for m in missing)
        print(f"WARNING: {n_missing} job(s) MISSING from the sweep, the report is partial:")
        for m in missing:
            print(f"  MISSING {describe_missing(m)}")
    for _name, p in result["paths"].items():
        print(f"wrote {p}")
    return 0
