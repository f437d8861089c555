"""Statistics of a sweep: seeds averaged into rows, and each transfer row compared with its scratch reference.

Two tests of "does transfer beat scratch", both paired:

- *paired t* (:func:`scipy.stats.ttest_rel`) on test Dice matched by seed, over the seeds present in both rows;
- *paired bootstrap* (:func:`paired_bootstrap_ci`): per-image test Dice averaged over seeds, the per-image
  difference transfer - scratch, and a percentile 95% CI of its mean from :func:`scipy.stats.bootstrap`, resampling
  the test images (the unit a new data set would vary). Resampling the differences is the paired bootstrap
  (``paired=True`` on the two vectors resamples the same image indices and gives the same distribution). The seed
  is fixed so a report is reproducible; the verdict is "real" when the CI excludes 0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from defectseg.report.rows import REFERENCE_IDENTITY, mode_label, none_last, row_identity, row_key, row_sort_key

#: Number of bootstrap resamples and RNG seed: fixed so reports are reproducible.
N_BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0

VERDICT_GAIN = "gain is real (CI excludes 0)"
VERDICT_LOSS = "loss is real (CI excludes 0)"
VERDICT_NS = "not significant"


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, or not finite."""
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


def paired_bootstrap_ci(
    diff: Sequence[float] | np.ndarray, n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean per-image difference, resampling test images (scipy.stats.bootstrap).

    ``diff`` holds one paired difference per test image; a fixed seed makes the verdict reproducible.
    """
    d = np.asarray(diff, dtype=float)
    if d.size == 0:
        raise ValueError("empty difference vector")
    if d.size == 1 or np.all(d == d[0]):
        return float(d[0]), float(d[0])  # every resample has the same mean
    result = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        batch=max(1, 2_000_000 // d.size),  # bound memory on large test sets
        vectorized=True,
        axis=-1,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_ttest_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """p of scipy's paired t-test; None when the differences are (near-)constant and t is undefined."""
    d = a - b
    if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):
        return None  # no fake p-value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(a, b).pvalue)


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


def _common(values: Iterable[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return Counter(vals).most_common(1)[0][0] if vals else None


def _row_of(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the runs (seeds) of one identity: means, stds and the values behind them."""
    identity = row_identity(members[0])
    vals = [v for v in (finite(r.get("best_val_dice")) for r in members) if v is not None]
    tests = [r["test_dice"] for r in members]

    def num(key: str) -> list[float]:
        return [v for v in (finite(r.get(key)) for r in members) if v is not None]

    return {
        **identity,
        "mode": mode_label(
            identity["freeze"], identity["freeze_depth"], identity["init_decoder"], identity["transfer"]
        ),
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


def _compare_with_scratch(row: dict[str, Any], ref: dict[str, Any], n_resamples: int, seed: int) -> None:
    """Fill the gain, paired t and bootstrap columns of a transfer row against its scratch reference."""
    if ref["test_dice_mean"] is not None and row["test_dice_mean"] is not None:
        row["gain_abs"] = row["test_dice_mean"] - ref["test_dice_mean"]
        if ref["test_dice_mean"] != 0:
            row["gain_pct"] = 100.0 * row["gain_abs"] / ref["test_dice_mean"]
    mine, base = _by_seed(row["_runs"]), _by_seed(ref["_runs"])
    paired = sorted(set(mine) & set(base), key=none_last)
    row["n_paired"] = len(paired)
    if len(paired) >= 2:
        row["ttest_p"] = paired_ttest_p(np.array([mine[s] for s in paired]), np.array([base[s] for s in paired]))
    pm, pb = _per_image_mean(row["_runs"]), _per_image_mean(ref["_runs"])
    if pm is not None and pb is not None and pm.size == pb.size:
        low, high = paired_bootstrap_ci(pm - pb, n_resamples=n_resamples, seed=seed)
        row["boot_ci_low"], row["boot_ci_high"], row["boot_n_images"] = low, high, int(pm.size)
        row["verdict"] = VERDICT_GAIN if low > 0 else VERDICT_LOSS if high < 0 else VERDICT_NS
    else:
        row["verdict"] = "n/a (no matching per-image Dice)"


def aggregate(
    runs: Sequence[dict[str, Any]], n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> list[dict[str, Any]]:
    """Table rows: one per row identity (:data:`defectseg.report.rows.ROW_IDENTITY`), seeds averaged.

    Gains and significance compare each mode with scratch of the same (dataset, model,
    train_images): paired t-test on test Dice matched by seed, and a paired bootstrap CI
    of the mean per-image Dice difference.  Undefined values are None.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[row_key(r)].append(r)
    rows = [_row_of(sorted(members, key=lambda r: none_last(r.get("seed")))) for members in groups.values()]
    for row in rows:
        if row["freeze"] == "scratch":
            continue
        ref = scratch_reference(row, rows)
        if ref is None:
            row["verdict"] = "no scratch baseline"
        else:
            _compare_with_scratch(row, ref, n_resamples, seed)
    rows.sort(key=row_sort_key)
    return rows


def scratch_reference(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Scratch row of the same (dataset, model, train_images); prefer same experiment/pretrain."""
    cands = [r for r in rows if r["freeze"] == "scratch" and all(r[key] == row[key] for key in REFERENCE_IDENTITY)]
    if not cands:
        return None
    return max(
        cands,
        key=lambda r: (
            r.get("weight_averaging") == row.get("weight_averaging"),  # scratch + ema is the reference of full + ema
            r["experiment"] == row["experiment"],
            r["pretrain_task"] == row["pretrain_task"],
            r["pretrain_task"] is None,
            r["n_seeds"],
        ),
    )
