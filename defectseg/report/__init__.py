"""Aggregate a Hydra multirun comparison sweep (scratch vs transfer) into the paper's Table 1.

Usage::

    python -m defectseg.report SWEEP_DIR [--out DIR] [--no-plots]

One module per job:

- :mod:`~defectseg.report.collect`: find the jobs and read what each run recorded (metrics.json, else its config);
- :mod:`~defectseg.report.launches`: the jobs ``multirun.yaml`` planned that never got a directory;
- :mod:`~defectseg.report.rows`: row identity (which runs are seeds of one row), labels and order;
- :mod:`~defectseg.report.statistics`: means, stds, paired t-test and paired bootstrap (scipy);
- :mod:`~defectseg.report.tables`: report.md and the CSV files;
- :mod:`~defectseg.report.plots`: compare.png and label_efficiency.png;
- :mod:`~defectseg.report.write`: :func:`write_report` and the command line.
"""

from defectseg.report.collect import collect_runs
from defectseg.report.launches import expected_jobs
from defectseg.report.plots import mode_colours, plot_compare, plot_label_efficiency
from defectseg.report.rows import MODE_ORDER, ROW_IDENTITY, display_mode, mode_label, row_key
from defectseg.report.statistics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    VERDICT_GAIN,
    VERDICT_LOSS,
    VERDICT_NS,
    aggregate,
    paired_bootstrap_ci,
)
from defectseg.report.tables import LABEL_EFF_CSV_COLUMNS, REPORT_CSV_COLUMNS, markdown_table
from defectseg.report.write import ReportError, main, write_report

__all__ = [
    "BOOTSTRAP_SEED",
    "LABEL_EFF_CSV_COLUMNS",
    "MODE_ORDER",
    "N_BOOTSTRAP",
    "REPORT_CSV_COLUMNS",
    "ROW_IDENTITY",
    "VERDICT_GAIN",
    "VERDICT_LOSS",
    "VERDICT_NS",
    "ReportError",
    "aggregate",
    "collect_runs",
    "display_mode",
    "expected_jobs",
    "main",
    "markdown_table",
    "mode_colours",
    "mode_label",
    "paired_bootstrap_ci",
    "plot_compare",
    "plot_label_efficiency",
    "row_key",
    "write_report",
]
