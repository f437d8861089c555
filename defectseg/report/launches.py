"""Which jobs a sweep planned, and which of them never got a directory.

The plan is the sweep's ``multirun.yaml`` (``hydra.sweeper.params`` then the command line's task overrides),
expanded by Hydra's own override grammar, so ``a,b``, ``range(0,3)``, ``choice(...)``, ``sort``/``shuffle``/``tag``
and quoted or list values count exactly as Hydra's basic sweeper launches them. A sweep this cannot expand (another
sweeper, ``glob()`` that needs the config directory, ``interval()``) gives an unknown count, never a wrong one.
Launched jobs are matched to the plan through the overrides Hydra wrote for each job, read with the same grammar.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


def read_yaml(path: Path) -> Any:
    """A YAML file's content, or None when it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


def _key(override: Override) -> str:
    """The config key or group an override sets, without the +/++/~ prefix Hydra allows."""
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def _parse(text: str) -> Override | None:
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except Exception:  # Hydra's grammar errors have several types; an unparsable item matches nothing
        return None


def _planned_overrides(sweep_dir: Path) -> list[str] | None:
    """The override strings of ``multirun.yaml`` in the order Hydra applies them; None without a basic sweep."""
    cfg = read_yaml(sweep_dir / "multirun.yaml")
    hydra_cfg = cfg.get("hydra") if isinstance(cfg, dict) else None
    if not isinstance(hydra_cfg, dict):
        return None
    sweeper = hydra_cfg.get("sweeper") or {}
    target = str(sweeper.get("_target_", "")) if isinstance(sweeper, dict) else ""
    if target and "BasicSweeper" not in target:
        return None  # optuna/nevergrad etc. do not sweep a cartesian product
    params = sweeper.get("params") if isinstance(sweeper, dict) else None
    planned = [f"{key}={value}" for key, value in params.items()] if isinstance(params, dict) else []
    task = (hydra_cfg.get("overrides") or {}).get("task")
    if task is None and not planned:
        return None
    return planned + [str(item) for item in task or []]


def expected_jobs(sweep_dir: str | os.PathLike[str]) -> tuple[int | None, list[dict[str, str]]]:
    """Expected job count and combinations (key -> value as Hydra writes it) from ``multirun.yaml``.

    Returns ``(None, [])`` when the file is absent or the sweep cannot be expanded.
    """
    planned = _planned_overrides(Path(sweep_dir))
    if planned is None:
        return None, []
    axes: dict[str, list[str]] = {}  # a later override of a key replaces an earlier one, as in Hydra
    try:
        for override in OverridesParser.create().parse_overrides(planned):
            if override.is_sweep_override():
                axes[_key(override)] = list(override.sweep_string_iterator())
            else:
                axes[_key(override)] = [override.get_value_element_as_str()]
    except Exception:  # glob() without the config dir, interval(), a grammar error: count unknown
        return None, []
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
    return len(combos), combos


def _launched_as(entry: dict[str, Any]) -> dict[str, str]:
    """key -> value (lower case) of the overrides a job was launched with."""
    parsed = [o for o in map(_parse, entry["overrides"]) if o is not None and not o.is_sweep_override()]
    return {_key(o): o.get_value_element_as_str().lower() for o in parsed}


def add_never_launched(
    root: Path,
    job_dirs: Sequence[Path],
    entries: Sequence[dict[str, Any]],
    missing: list[dict[str, Any]],
    finished_elsewhere: Sequence[dict[str, Any]] = (),
) -> None:
    """Append MISSING entries for the jobs ``root/multirun.yaml`` expects but no directory holds.

    A job that a stopped sweep never launched but a sweep beside it ran with the same overrides
    (a sweep continued in another directory) is not missing: the report has its result."""
    n_expected, combos = expected_jobs(root)
    n_present = len(job_dirs)
    if n_expected is None or n_present >= n_expected:
        return
    shortfall = n_expected - n_present
    swept = {k for k in (combos[0] if combos else {}) if len({c.get(k) for c in combos}) > 1}

    def ran(combo: dict[str, str], job: dict[str, str]) -> bool:
        """Same value for every swept key; any other key the job names must agree too."""
        return all(job.get(k) == combo[k].lower() for k in swept) and all(
            job[k] == v.lower() for k, v in combo.items() if k in job
        )

    present = [_launched_as(e) for e in entries]
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
    elsewhere = [_launched_as(r) for r in finished_elsewhere]
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
