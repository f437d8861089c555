"""Aggregate a Hydra multirun comparison sweep (scratch vs transfer) into the paper's Table 1.

Usage::

    python -m defectseg.report SWEEP_DIR [--out DIR]

Reads ``SWEEP_DIR/multirun.yaml`` and every job directory (``SWEEP_DIR/<job>/`` or one level
deeper, e.g. ``SWEEP_DIR/label_efficiency/3/``) holding ``.hydra/`` and, once finished,
``metrics.json``.  Writes ``report.csv``, ``report.md``, ``compare.png`` and, when the sweep
varies the number of labelled training images, ``label_efficiency.csv`` and
``label_efficiency.png``.  Jobs without ``metrics.json`` are reported as MISSING, never
dropped silently, so a partial sweep still gives an honest report.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import csv
import datetime as _dt
import io
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from defectseg.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "MODE_ORDER",
    "ReportError",
    "aggregate",
    "collect_runs",
    "expected_jobs",
    "main",
    "markdown_table",
    "mode_label",
    "paired_bootstrap_ci",
    "plot_compare",
    "plot_label_efficiency",
    "write_report",
]

#: Number of bootstrap resamples and RNG seed: fixed so reports are reproducible.
N_BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0

#: Display order of freeze modes (scratch first: it is the reference of every gain).
MODE_ORDER = {"scratch": 0, "encoder": 1, "partial": 2, "none": 3}

VERDICT_GAIN = "gain is real (CI excludes 0)"
VERDICT_LOSS = "loss is real (CI excludes 0)"
VERDICT_NS = "not significant"

REPORT_CSV_COLUMNS = [
    "experiment",
    "dataset",
    "model",
    "pretrain_task",
    "encoder_from",
    "freeze",
    "freeze_depth",
    "init_decoder",
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


class ReportError(RuntimeError):
    """Raised when no report can be made (missing sweep dir, no finished job)."""


# --------------------------------------------------------------------------- small helpers


def mode_label(freeze: str | None, freeze_depth: int | None = None, init_decoder: bool = False) -> str:
    """Human label of a freeze mode, as used in the table and the plots."""
    if init_decoder:
        return f"{mode_label(freeze, freeze_depth)} + stage-1 decoder"
    if freeze == "scratch":
        return "scratch"
    if freeze == "encoder":
        return "transfer-frozen encoder"
    if freeze == "none":
        return "transfer-full fine-tuning"
    if freeze == "partial":
        return f"partial-{freeze_depth}" if freeze_depth is not None else "partial"
    return str(freeze)


def _natural_key(text: str) -> list[Any]:
    """Sort job dirs 0,1,2,...,10 numerically, not lexically."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _none_last(value: Any) -> tuple[bool, Any]:
    """Sort key that tolerates None mixed with comparable values."""
    return (value is None, value if value is not None else 0)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> float | None:
    """Sample std (ddof=1); undefined for fewer than two seeds."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _load_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


# --------------------------------------------------------------------------- collecting


def _split_sweep_values(value: str) -> list[str] | None:
    """Split a Hydra sweep value ``a,b,'c d',[1,2]`` on top-level commas.

    Returns None for sweep syntax we cannot expand safely (range(), glob(), choice()...),
    so the expected job count is then reported as unknown rather than wrong.
    """
    if re.match(r"^\s*(range|glob|choice|interval|tag|sort|shuffle)\s*\(", value):
        return None
    parts: list[str] = []
    depth, quote, cur = 0, "", ""
    for ch in value:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def _norm_key(key: str) -> str:
    return key.strip().lstrip("+~").strip()


def _norm_val(val: str) -> str:
    val = val.strip()
    if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
        val = val[1:-1]
    return val


def _parse_override(text: str) -> tuple[str, str] | None:
    if "=" not in str(text):
        return None
    key, val = str(text).split("=", 1)
    return _norm_key(key), val


def expected_jobs(sweep_dir: str | os.PathLike[str]) -> tuple[int | None, list[dict[str, str]]]:
    """Expected job count and combinations from ``multirun.yaml`` (cartesian product).

    Returns ``(None, [])`` when the file is absent or the sweep cannot be expanded.
    """
    cfg = _load_yaml(Path(sweep_dir) / "multirun.yaml")
    if not isinstance(cfg, dict):
        return None, []
    hydra_cfg = cfg.get("hydra") or {}
    if not isinstance(hydra_cfg, dict):
        return None, []
    sweeper = hydra_cfg.get("sweeper") or {}
    target = str(sweeper.get("_target_", "")) if isinstance(sweeper, dict) else ""
    if target and "BasicSweeper" not in target:
        return None, []  # optuna/nevergrad etc. do not sweep a cartesian product
    axes: dict[str, list[str]] = {}
    params = sweeper.get("params") if isinstance(sweeper, dict) else None
    if isinstance(params, dict):
        for key, val in params.items():
            vals = _split_sweep_values(str(val))
            if vals is None:
                return None, []
            axes[_norm_key(str(key))] = [_norm_val(v) for v in vals]
    task = (hydra_cfg.get("overrides") or {}).get("task")
    if task is None and not axes:
        return None, []
    for item in task or []:
        parsed = _parse_override(item)
        if parsed is None:
            continue
        key, val = parsed
        vals = _split_sweep_values(val)
        if vals is None:
            return None, []
        axes[key] = [_norm_val(v) for v in vals]
    keys = list(axes)
    combos = [dict(zip(keys, prod)) for prod in itertools.product(*(axes[k] for k in keys))]
    return len(combos), combos


def _is_job_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "metrics.json").is_file()


def _find_job_dirs(root: Path) -> list[Path]:
    """Job dirs directly below the sweep dir or one level deeper (e.g. label_efficiency/3)."""
    found: list[Path] = []

    def children(p: Path) -> list[Path]:
        try:
            return sorted(
                (c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")),
                key=lambda c: _natural_key(c.name),
            )
        except OSError:
            return []

    for child in children(root):
        if _is_job_dir(child):
            found.append(child)
        else:
            found.extend(g for g in children(child) if _is_job_dir(g))
    if not found and _is_job_dir(root):
        found.append(root)  # a single (non-multirun) run dir is a sweep of one
    return found


def _job_overrides(job_dir: Path) -> list[str]:
    ov = _load_yaml(job_dir / ".hydra" / "overrides.yaml")
    return [str(x) for x in ov] if isinstance(ov, list) else []


def _override_value(overrides: Iterable[str], key: str) -> str | None:
    for item in overrides:
        parsed = _parse_override(item)
        if parsed and parsed[0] == key:
            return _norm_val(parsed[1])
    return None


def _fill_from_overrides(run: dict[str, Any], overrides: list[str]) -> None:
    """Older/partial metrics.json: recover the sweep axes from the job's overrides."""
    if run.get("freeze") is None:
        run["freeze"] = _override_value(overrides, "freeze")
    if run.get("seed") is None:
        seed = _override_value(overrides, "seed")
        if seed is not None:
            try:
                run["seed"] = int(seed)
            except ValueError:
                run["seed"] = seed
    if run.get("dataset") is None:
        run["dataset"] = _override_value(overrides, "dataset")


def _encoder_folder(metrics: dict[str, Any]) -> Path | None:
    """The stage-1 run directory a transfer job's encoder came from (None for scratch or when unrecorded)."""
    if metrics.get("freeze") == "scratch":
        return None
    encoder = metrics.get("pretrained_encoder")
    path = encoder.get("path") if isinstance(encoder, dict) else encoder
    if not path:
        return None
    path = Path(str(path))
    return path.parent if path.suffix else path


def _encoder_source(metrics: dict[str, Any]) -> str | None:
    """The stage-1 run a job's encoder came from (its folder's name), so that two stage-1 runs of one
    objective (say a small and a large one) make two rows of the table instead of one averaged row."""
    folder = _encoder_folder(metrics)
    return (folder.name or None) if folder is not None else None


def _stage1_facts(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One line per stage-1 run the transfer jobs started from: which one, on what, how big, how good.

    From the provenance stage 2 recorded (encoder.json), completed by the stage-1 run's own metrics.json when
    it is still where it was (older encoders recorded no size), so a reused stage 1 is named in the report.
    """
    facts: dict[str, str] = {}
    for run in runs:
        folder, encoder = _encoder_folder(run), run.get("pretrained_encoder")
        if folder is None or not isinstance(encoder, dict) or str(folder) in facts:
            continue
        info = dict(encoder)
        with contextlib.suppress(OSError, ValueError, TypeError):
            info = {**json.loads((folder / "metrics.json").read_text(encoding="utf-8")), **info}
        size = [
            f"{info['train_images']:,} train images" if isinstance(info.get("train_images"), int) else None,
            f"{info['epochs']} epochs" if isinstance(info.get("epochs"), int) else None,
        ]
        quality = [
            f"{name} {value:.3f}"
            for name, value in (
                ("test accuracy", _finite(info.get("test_accuracy"))),
                ("test AUROC", _finite(info.get("test_auroc"))),
                ("test Dice", _finite(info.get("test_dice"))),
                ("weight change", _finite(info.get("encoder_weight_change"))),
            )
            if value is not None
        ]
        what = f"{info.get('pretrain_task') or 'stage 1'} on {info.get('dataset') or 'unknown data'}"
        facts[str(folder)] = (
            f"`{folder.name}` ({what}"
            + "".join(f"; {part}" for part in (", ".join(p for p in size if p), ", ".join(quality)) if part)
            + ")"
        )
    return list(facts.values())


def collect_runs(sweep_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Finished runs (metrics.json + job info) and MISSING jobs of a sweep directory.

    Each run is the metrics.json dict plus ``job`` (path relative to the sweep dir),
    ``job_dir``, ``overrides`` and ``mode`` (display label).  Each missing entry has
    ``job``, ``job_dir``, ``overrides`` and ``reason``; jobs expected from multirun.yaml
    but with no directory at all appear with ``job_dir=None``.
    """
    root = Path(sweep_dir)
    runs: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    job_dirs = _find_job_dirs(root)
    for job_dir in job_dirs:
        rel = job_dir.relative_to(root).as_posix() if job_dir != root else "."
        overrides = _job_overrides(job_dir)
        entry = {"job": rel, "job_dir": str(job_dir), "overrides": overrides}
        mpath = job_dir / "metrics.json"
        if not mpath.is_file():
            missing.append({**entry, "reason": "no metrics.json (crashed, killed or unfinished)"})
            continue
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            missing.append({**entry, "reason": f"unreadable metrics.json ({exc.__class__.__name__})"})
            continue
        if not isinstance(metrics, dict):
            missing.append({**entry, "reason": "metrics.json is not an object"})
            continue
        if metrics.get("stage") == "pretrain":
            continue  # the stage-1 run of a comparison (make compare puts it beside the sweep): not a stage-2 job
        if _finite(metrics.get("test_dice")) is None:
            missing.append({**entry, "reason": "metrics.json has no finite test_dice"})
            continue
        run = dict(metrics)
        _fill_from_overrides(run, overrides)
        run.update(entry)
        run["test_dice"] = float(run["test_dice"])
        run["init_decoder"] = bool(
            metrics.get("init_decoder")
        )  # the decoder started from stage 1's (a record when it did)
        run["encoder_from"] = _encoder_source(metrics)
        run["mode"] = mode_label(run.get("freeze"), run.get("freeze_depth"), run["init_decoder"])
        run["_times"] = _job_times(job_dir, metrics)
        runs.append(run)

    # One sweep, or several side by side (make compare-pretrain: finetune/transfer + finetune/scratch), each with its multirun.yaml
    sweeps = [root]
    if not (root / "multirun.yaml").is_file():
        sweeps = [child for child in sorted(root.iterdir()) if (child / "multirun.yaml").is_file()] or [root]
    for sweep in sweeps:
        inside = [r for r in (*runs, *missing) if r.get("job_dir") and Path(r["job_dir"]).is_relative_to(sweep)]
        _add_never_launched(
            sweep, [d for d in job_dirs if d.is_relative_to(sweep)], inside, missing, finished_elsewhere=runs
        )
    return runs, missing


def _add_never_launched(
    root: Path,
    job_dirs: Sequence[Path],
    entries: Sequence[dict[str, Any]],
    missing: list[dict[str, Any]],
    finished_elsewhere: Sequence[dict[str, Any]] = (),
) -> None:
    """MISSING entries for the jobs ``root/multirun.yaml`` expects but no directory holds.

    A job that a stopped sweep never launched but a sweep beside it ran with the same overrides
    (a sweep continued in another directory) is not missing: the report has its result."""
    n_expected, combos = expected_jobs(root)
    n_present = len(job_dirs)
    if n_expected is None or n_present >= n_expected:
        return
    shortfall = n_expected - n_present
    swept = {k for k in (combos[0] if combos else {}) if len({str(c.get(k)) for c in combos}) > 1}

    def overrides_of(entry: dict[str, Any]) -> dict[str, str]:
        return {k: str(_norm_val(v)).lower() for k, v in filter(None, map(_parse_override, entry["overrides"]))}

    def ran(combo: dict[str, Any], job: dict[str, str]) -> bool:
        """Same value for every swept key; any other key the job names must agree too."""
        return all(job.get(k) == str(combo[k]).lower() for k in swept) and all(
            job[k] == str(v).lower() for k, v in combo.items() if k in job
        )

    present = [overrides_of(e) for e in entries]
    absent = [c for c in combos if not any(ran(c, p) for p in present)]
    if len(absent) != shortfall:
        missing.append(
            {
                "job": None,
                "job_dir": None,
                "overrides": [],
                "reason": f"{shortfall} of {n_expected} expected jobs have no job directory (never launched)",
                "count": shortfall,
            }
        )
        return
    elsewhere = [overrides_of(r) for r in finished_elsewhere]
    for combo in absent:
        if not any(ran(combo, job) for job in elsewhere):
            missing.append(
                {
                    "job": None,
                    "job_dir": None,
                    "overrides": [f"{k}={v}" for k, v in combo.items()],
                    "reason": "no job directory (never launched)",
                }
            )


def _job_times(job_dir: Path, metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(start, end) epoch seconds: metrics keys if given, else file mtimes (config at start)."""

    def stamp(v: Any) -> float | None:
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
        if isinstance(v, str):
            try:
                return _dt.datetime.fromisoformat(v).timestamp()
            except ValueError:
                return None
        return None

    start = next((stamp(metrics[k]) for k in ("start_time", "started_at") if k in metrics), None)
    end = next((stamp(metrics[k]) for k in ("end_time", "finished_at") if k in metrics), None)
    try:
        if start is None and (job_dir / ".hydra" / "config.yaml").exists():
            start = (job_dir / ".hydra" / "config.yaml").stat().st_mtime
        if end is None:
            end = (job_dir / "metrics.json").stat().st_mtime
    except OSError:
        pass
    return start, end


# --------------------------------------------------------------------------- statistics


def paired_bootstrap_ci(
    diff: Sequence[float] | np.ndarray, n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean per-image difference (resampling test images).

    A fixed seed makes the verdict reproducible between report runs.
    """
    d = np.asarray(diff, dtype=float)
    if d.size == 0:
        raise ValueError("empty difference vector")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, min(n_resamples, 2_000_000 // d.size))  # bound memory on large test sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _per_image_mean(runs: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Per-image Dice averaged over seeds; None if runs disagree on the test set size."""
    vecs = [r.get("test_dice_per_image") for r in runs]
    vecs = [np.asarray(v, dtype=float) for v in vecs if isinstance(v, list) and len(v) > 0]
    if not vecs or len({v.size for v in vecs}) != 1:
        return None
    return np.mean(np.stack(vecs), axis=0)


def _by_seed(runs: Sequence[dict[str, Any]]) -> dict[Any, float]:
    acc: dict[Any, list[float]] = defaultdict(list)
    for r in runs:
        if r.get("seed") is not None:
            acc[r["seed"]].append(r["test_dice"])
    return {s: float(np.mean(v)) for s, v in acc.items()}


def _group_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (
        run.get("experiment"),
        run.get("dataset"),
        run.get("model"),
        run.get("pretrain_task"),
        run.get("encoder_from"),
        run.get("freeze"),
        run.get("freeze_depth"),
        bool(run.get("init_decoder")),
        run.get("train_images"),
    )


def _common(values: Iterable[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return Counter(vals).most_common(1)[0][0] if vals else None


def _row_sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        _none_last(row["experiment"]),
        _none_last(row["dataset"]),
        _none_last(row["model"]),
        _none_last(row["train_images"]),
        MODE_ORDER.get(row["freeze"], 9),
        _none_last(row["freeze_depth"]),
        _none_last(row["pretrain_task"]),
        _none_last(row.get("encoder_from")),
        row.get("init_decoder", False),
    )


def aggregate(
    runs: Sequence[dict[str, Any]], n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> list[dict[str, Any]]:
    """Table rows: one per (experiment, dataset, model, pretrain_task, stage-1 run, mode, train_images).

    Gains and significance compare each mode with scratch of the same (dataset, model,
    train_images): paired t-test on test Dice matched by seed, and a paired bootstrap CI
    of the mean per-image Dice difference.  Undefined values are None.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[_group_key(r)].append(r)

    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: _none_last(r.get("seed")))
        experiment, dataset, model, pretrain_task, encoder_from, freeze, freeze_depth, init_decoder, train_images = key
        vals = [v for v in (_finite(r.get("best_val_dice")) for r in members) if v is not None]
        tests = [r["test_dice"] for r in members]
        num = lambda k: [v for v in (_finite(r.get(k)) for r in members) if v is not None]
        rows.append(
            {
                "experiment": experiment,
                "dataset": dataset,
                "model": model,
                "pretrain_task": pretrain_task,
                "encoder_from": encoder_from,
                "freeze": freeze,
                "freeze_depth": freeze_depth,
                "init_decoder": init_decoder,
                "mode": mode_label(freeze, freeze_depth, init_decoder),
                "train_images": train_images,
                "trainable_params": _common(r.get("trainable_params") for r in members),
                "total_params": _common(r.get("total_params") for r in members),
                "n_seeds": len(members),
                "seeds": [r.get("seed") for r in members],
                "val_dice_mean": _mean(vals),
                "val_dice_std": _std(vals),
                "val_dice_values": vals,
                "test_dice_mean": _mean(tests),
                "test_dice_std": _std(tests),
                "test_dice_values": tests,
                "gain_abs": None,
                "gain_pct": None,
                "ttest_p": None,
                "n_paired": 0,
                "boot_ci_low": None,
                "boot_ci_high": None,
                "boot_n_images": 0,
                "verdict": None,
                "best_epoch_mean": _mean(num("best_epoch")),
                "epochs_mean": _mean(num("epochs")),
                "train_seconds_mean": _mean(num("train_seconds")),
                "train_seconds_total": float(sum(num("train_seconds"))),
                "train_images_per_second_mean": _mean(num("train_images_per_second")),
                "device": _common(r.get("device") for r in members),
                "precision": _common(r.get("precision") for r in members),
                "_runs": members,
            }
        )

    for row in rows:
        if row["freeze"] == "scratch":
            continue
        ref = _scratch_reference(row, rows)
        if ref is None:
            row["verdict"] = "no scratch baseline"
            continue
        if ref["test_dice_mean"] is not None and row["test_dice_mean"] is not None:
            row["gain_abs"] = row["test_dice_mean"] - ref["test_dice_mean"]
            if ref["test_dice_mean"] != 0:
                row["gain_pct"] = 100.0 * row["gain_abs"] / ref["test_dice_mean"]
        mine, base = _by_seed(row["_runs"]), _by_seed(ref["_runs"])
        paired = sorted(set(mine) & set(base), key=_none_last)
        row["n_paired"] = len(paired)
        if len(paired) >= 2:
            from scipy import stats

            a = np.array([mine[s] for s in paired])
            b = np.array([base[s] for s in paired])
            d = a - b
            # (Near-)constant differences make the t statistic undefined: no fake p-value.
            if np.ptp(d) > 1e-9 * max(1.0, float(np.abs(d).max())):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    row["ttest_p"] = float(stats.ttest_rel(a, b).pvalue)
        pm, pb = _per_image_mean(row["_runs"]), _per_image_mean(ref["_runs"])
        if pm is not None and pb is not None and pm.size == pb.size:
            low, high = paired_bootstrap_ci(pm - pb, n_resamples=n_resamples, seed=seed)
            row["boot_ci_low"], row["boot_ci_high"], row["boot_n_images"] = low, high, int(pm.size)
            row["verdict"] = VERDICT_GAIN if low > 0 else VERDICT_LOSS if high < 0 else VERDICT_NS
        else:
            row["verdict"] = "n/a (no matching per-image Dice)"
    rows.sort(key=_row_sort_key)
    return rows


def _scratch_reference(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Scratch row of the same (dataset, model, train_images); prefer same experiment/pretrain."""
    cands = [
        r
        for r in rows
        if r["freeze"] == "scratch"
        and r["dataset"] == row["dataset"]
        and r["model"] == row["model"]
        and r["train_images"] == row["train_images"]
    ]
    if not cands:
        return None
    return max(
        cands,
        key=lambda r: (
            r["experiment"] == row["experiment"],
            r["pretrain_task"] == row["pretrain_task"],
            r["pretrain_task"] is None,
            r["n_seeds"],
        ),
    )


# --------------------------------------------------------------------------- formatting


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


def _multi(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return len({r[key] for r in rows}) > 1


def _display_mode(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """Mode label, plus the pretraining task and the stage-1 run when the sweep compares several."""
    if row["freeze"] == "scratch":
        return row["mode"]
    transfer = [r for r in rows if r["freeze"] != "scratch"]
    tags = [str(row[key]) for key in ("pretrain_task", "encoder_from") if len({r.get(key) for r in transfer}) > 1]
    return f"{row['mode']} [{', '.join(tags)}]" if tags else row["mode"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1-style markdown table (one row per group, mean ± sample std over seeds)."""
    cols = ["dataset"]
    if _multi(rows, "experiment"):
        cols.insert(0, "experiment")
    if _multi(rows, "model"):
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
            "training": _display_mode(r, rows),
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


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_value(r.get(c)) for c in columns})
    return buf.getvalue()


def _describe_missing(m: dict[str, Any]) -> str:
    ov = " ".join(m["overrides"]) if m["overrides"] else "(overrides unknown)"
    where = f"`{m['job']}`" if m.get("job") else "(no dir)"
    return f"{where} {ov} — {m['reason']}"


def _summary_lines(sweep_dir: Path, runs: Sequence[dict[str, Any]], missing: Sequence[dict[str, Any]]) -> list[str]:
    """Header facts: experiment, machine, wall time, date; what a reader needs to trust Table 1."""
    experiments = sorted({str(r.get("experiment")) for r in runs if r.get("experiment")})
    devices = Counter(str(r.get("device")) for r in runs if r.get("device"))
    precisions = sorted({str(r.get("precision")) for r in runs if r.get("precision")})
    total = sum(v for v in (_finite(r.get("train_seconds")) for r in runs) if v is not None)
    starts = [r["_times"][0] for r in runs if r.get("_times") and r["_times"][0] is not None]
    ends = [r["_times"][1] for r in runs if r.get("_times") and r["_times"][1] is not None]
    n_missing = sum(m.get("count", 1) for m in missing)
    span = ""
    longest = max((v for v in (_finite(r.get("train_seconds")) for r in runs) if v is not None), default=0.0)
    # A span shorter than the longest job means the mtimes were reset by a copy: do not show it.
    if starts and ends and max(ends) - min(starts) >= longest:
        t0 = _dt.datetime.fromtimestamp(min(starts)).strftime("%Y-%m-%d %H:%M")
        t1 = _dt.datetime.fromtimestamp(max(ends)).strftime("%Y-%m-%d %H:%M")
        span = f"; span {_fmt_seconds(max(ends) - min(starts))} ({t0} → {t1})"
    dev = "; ".join(f"{d} ×{n}" if len(devices) > 1 else d for d, n in devices.most_common()) or "unknown"
    stage1 = _stage1_facts(runs)
    return [
        f"- **Experiment:** {', '.join(experiments) or 'n/a'}",
        f"- **Sweep dir:** `{sweep_dir}`",
        *([f"- **Stage 1:** {'; '.join(stage1)}"] if stage1 else []),
        f"- **Machine:** {dev}" + (f" (precision: {', '.join(precisions)})" if precisions else ""),
        f"- **Wall time:** {_fmt_seconds(total)} total training time over {len(runs)} finished jobs{span}",
        f"- **Date:** {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} (report generated)",
        f"- **Jobs:** {len(runs)} finished, {n_missing} MISSING",
    ]


def _markdown_report(
    sweep_dir: Path,
    rows: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    missing: Sequence[dict[str, Any]],
    images: Sequence[str],
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
    parts += ["## MISSING jobs", ""]
    if missing:
        parts += [f"- {_describe_missing(m)}" for m in missing]
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


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any:
    """Figure without pyplot: no global backend switch, no figure leak in long processes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _mode_colours(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A distinct, stable colour per displayed mode; shades of one hue share a freeze mode."""
    labels = sorted(
        {
            (_display_mode(r, rows), r["freeze"], _none_last(r.get("pretrain_task")), bool(r.get("init_decoder")))
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
    ident = [str(row[k]) for k in ("experiment", "dataset", "model") if _multi(rows, k) or k == "dataset"]
    if _multi(rows, "train_images"):
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
            col = colours[_display_mode(r, rows)]
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
    colours = _mode_colours(rows)
    panels: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        panel, group = _panel_and_group(r, rows)
        panels.setdefault(panel, {}).setdefault(group, []).append(r)
    n_groups = max(len(g) for g in panels.values())
    n_bars = max(len(b) for g in panels.values() for b in g.values())
    fig = _new_figure(max(6.0, 1.0 + n_groups * (0.5 + 0.6 * n_bars)), 0.6 + 4.4 * len(panels))
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
    _save_figure(fig, path)
    return path


def _label_eff_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
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
            _none_last(r["experiment"]),
            _none_last(r["dataset"]),
            _none_last(r["model"]),
            MODE_ORDER.get(r["freeze"], 9),
            _none_last(r["freeze_depth"]),
            _none_last(r["pretrain_task"]),
            r["train_images"],
        ),
    )


def plot_label_efficiency(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Test Dice vs number of labelled images (log x): how much labelling transfer saves."""
    path = Path(path)
    rows = _label_eff_rows(rows)
    colours = _mode_colours(rows)
    panels: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["experiment"], r["dataset"], r["model"]), []).append(r)
    fig = _new_figure(6.2 * len(panels) + 1.8, 4.8)
    sizes = sorted({r["train_images"] for r in rows})
    for pi, ((exp, dataset, model), prow) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), pi + 1)
        lines: dict[str, list[dict[str, Any]]] = {}
        for r in prow:
            lines.setdefault(_display_mode(r, rows), []).append(r)
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
    _save_figure(fig, path)
    return path


# --------------------------------------------------------------------------- orchestration


def write_report(
    sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, plots: bool = True
) -> dict[str, Any]:
    """Collect, aggregate and write every report file; the single entry point for code and CLI.

    Returns ``{"paths": {name: Path}, "rows": [...], "missing": [...], "runs": [...],
    "markdown": str}``.  Raises ReportError when the sweep dir is absent or holds no
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
    atomic_write_text(paths["report.csv"], _csv_text(rows, REPORT_CSV_COLUMNS))
    images: list[str] = []
    curve_rows = _label_eff_rows(rows)
    if curve_rows:
        paths["label_efficiency.csv"] = out / "label_efficiency.csv"
        atomic_write_text(paths["label_efficiency.csv"], _csv_text(curve_rows, LABEL_EFF_CSV_COLUMNS))
    if plots:
        paths["compare.png"] = plot_compare(rows, out / "compare.png")
        images.append("compare.png")
        if curve_rows:
            paths["label_efficiency.png"] = plot_label_efficiency(curve_rows, out / "label_efficiency.png")
            images.append("label_efficiency.png")
    markdown = _markdown_report(root, rows, runs, missing, images)
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
    parser = argparse.ArgumentParser(prog="python -m defectseg.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="Hydra multirun sweep directory (holds multirun.yaml and job dirs)")
    parser.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(argv)
    try:
        result = write_report(args.sweep_dir, args.out, plots=not args.no_plots)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"], end="")
    missing = result["missing"]
    if missing:
        n_missing = sum(m.get("count", 1) for m in missing)
        print(f"WARNING: {n_missing} job(s) MISSING from the sweep, the report is partial:")
        for m in missing:
            print(f"  MISSING {_describe_missing(m)}")
    for _name, p in result["paths"].items():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
