"""Find a sweep's jobs and read what each one recorded.

A job is a directory holding ``.hydra/`` and, once finished, ``metrics.json``: directly under the sweep directory
(``SWEEP/<job>/``) or one level deeper (``SWEEP/label_efficiency/3/``). What a run *is* (freeze mode, seed, data set,
model, label budget, stage-1 encoder) comes from its ``metrics.json``; a run that did not record a field falls back to
its resolved ``.hydra/config.yaml``. Jobs without a usable ``metrics.json`` are returned as MISSING, never dropped,
and so are the jobs the sweep's launch plan expected but no directory holds (:mod:`defectseg.report.launches`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from defectseg.report.launches import add_never_launched, read_yaml
from defectseg.report.rows import mode_label, recipe_of
from defectseg.report.statistics import finite

#: metrics.json field -> key of the resolved config that holds it, for runs that did not record the field.
CONFIG_FALLBACKS = {"freeze": "freeze.mode", "seed": "seed", "dataset": "dataset.name", "experiment": "experiment_name"}


def _natural_key(text: str) -> list[Any]:
    """Sort job dirs 0,1,2,...,10 numerically, not lexically."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _is_job_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "metrics.json").is_file()


def find_job_dirs(root: Path) -> list[Path]:
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
    """The overrides Hydra launched the job with: shown beside a MISSING job, matched against the launch plan."""
    ov = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    return [str(x) for x in ov] if isinstance(ov, list) else []


def _fill_from_config(run: dict[str, Any], job_dir: Path) -> None:
    """A run whose metrics.json lacks an identity field (older runs): take it from the job's resolved config."""
    wanted = [field for field in CONFIG_FALLBACKS if run.get(field) is None]
    if not wanted or not (job_dir / ".hydra" / "config.yaml").is_file():
        return
    try:
        cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    except Exception:  # an unreadable config only loses the fallback, never the run
        return
    for field in wanted:
        try:
            value = OmegaConf.select(cfg, CONFIG_FALLBACKS[field], throw_on_resolution_failure=False)
        except Exception:
            value = None
        if value is not None and not OmegaConf.is_config(value):
            run[field] = value


def encoder_folder(metrics: dict[str, Any]) -> Path | None:
    """The stage-1 run directory a transfer job's encoder came from (None for scratch or when unrecorded)."""
    if metrics.get("freeze") == "scratch":
        return None
    encoder = metrics.get("pretrained_encoder")
    path = encoder.get("path") if isinstance(encoder, dict) else encoder
    if not path:
        return None
    path = Path(str(path))
    return path.parent if path.suffix else path


def encoder_source(metrics: dict[str, Any]) -> str | None:
    """The stage-1 run a job's encoder came from (its folder's name), so that two stage-1 runs of one
    objective (say a small and a large one) make two rows of the table instead of one averaged row."""
    folder = encoder_folder(metrics)
    return (folder.name or None) if folder is not None else None


def stage1_facts(runs: list[dict[str, Any]]) -> list[str]:
    """One line per stage-1 run the transfer jobs started from: which one, on what, how big, how good.

    From the provenance stage 2 recorded (encoder.json), completed by the stage-1 run's own metrics.json when
    it is still where it was (older encoders recorded no size), so a reused stage 1 is named in the report.
    """
    facts: dict[str, str] = {}
    for run in runs:
        folder, encoder = encoder_folder(run), run.get("pretrained_encoder")
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
                ("test accuracy", finite(info.get("test_accuracy"))),
                ("test AUROC", finite(info.get("test_auroc"))),
                ("test Dice", finite(info.get("test_dice"))),
                ("weight change", finite(info.get("encoder_weight_change"))),
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


def _read_metrics(job_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, None) for a readable metrics.json object, else (None, why it is missing)."""
    mpath = job_dir / "metrics.json"
    if not mpath.is_file():
        return None, "no metrics.json (crashed, killed or unfinished)"
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable metrics.json ({exc.__class__.__name__})"
    if not isinstance(metrics, dict):
        return None, "metrics.json is not an object"
    return metrics, None


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
    job_dirs = find_job_dirs(root)
    for job_dir in job_dirs:
        rel = job_dir.relative_to(root).as_posix() if job_dir != root else "."
        entry = {"job": rel, "job_dir": str(job_dir), "overrides": _job_overrides(job_dir)}
        metrics, why = _read_metrics(job_dir)
        if metrics is None:
            missing.append({**entry, "reason": why})
            continue
        if metrics.get("stage") == "pretrain":
            continue  # the stage-1 run of a comparison (make compare puts it beside the sweep): not a stage-2 job
        if finite(metrics.get("test_dice")) is None:
            missing.append({**entry, "reason": "metrics.json has no finite test_dice"})
            continue
        run = dict(metrics)
        _fill_from_config(run, job_dir)
        run.update(entry)
        run["test_dice"] = float(run["test_dice"])
        run["init_decoder"] = bool(metrics.get("init_decoder"))  # the decoder started from stage 1's
        run["encoder_from"] = encoder_source(metrics)
        run["transfer"], run["transfer_settings"] = recipe_of(run)
        run["mode"] = mode_label(run.get("freeze"), run.get("freeze_depth"), run["init_decoder"], run["transfer"])
        run["_times"] = _job_times(job_dir, metrics)
        runs.append(run)

    # One sweep, or several side by side (make compare-pretrain: finetune/transfer + finetune/scratch), each with
    # its multirun.yaml
    sweeps = [root]
    if not (root / "multirun.yaml").is_file():
        sweeps = [child for child in sorted(root.iterdir()) if (child / "multirun.yaml").is_file()] or [root]
    for sweep in sweeps:
        inside = [r for r in (*runs, *missing) if r.get("job_dir") and Path(r["job_dir"]).is_relative_to(sweep)]
        add_never_launched(
            sweep, [d for d in job_dirs if d.is_relative_to(sweep)], inside, missing, finished_elsewhere=runs
        )
    return runs, missing


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
