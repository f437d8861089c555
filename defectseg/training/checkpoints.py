"""Checkpoints on disk: written atomically, read as data only, and found again to resume a run."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_writer
from defectseg.utils.safe_load import torch_load_safely

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
# Settings that may change between the interrupted run and its resume (or a reuse) without changing what is trained;
# the logger's folder follows the run's, so a run directory that was moved or copied is still the same run.
RESUME_MAY_CHANGE = (
    "resume",
    "reuse",
    "ckpt_path",
    "paths",
    "logger",
    "callbacks",
    "dataset.num_workers",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.precision",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "stage1_synthetic_per_class",  # its effect shows in dataset.synthetic.n_per_class (runs before it lack the key)
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temp file beside the target, fsync, rename: a crash leaves the previous checkpoint or the new one.

    Lightning's own save goes through an fsspec "transaction" that writes into the system
    temp directory and moves the file over without fsync; across file systems (/tmp on
    tmpfs, outputs on disk) that move is a copy, so a kill mid-copy truncates ``last.ckpt``.
    Every load goes through :func:`load_checkpoint`, so a checkpoint is never unpickled as code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_writer(path, binary=True) as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(
        self, path: Any, map_location: Callable | str | None = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location)


def load_checkpoint(
    path: str | Path, map_location: Callable | str | None = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` whatever the caller asks (``torch_load_safely``); errors name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    checkpoint = torch_load_safely(path, "checkpoint", map_location, mmap=mmap)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def resume_path(cfg: DictConfig, output_dir: Path) -> Path | None:
    """The checkpoint ``trainer.fit`` resumes from: ``resume=true`` / ``ckpt_path=last`` (this run directory's
    last.ckpt) or ``ckpt_path=PATH``.

    With ``reuse=true`` an interrupted run in the directory (a last.ckpt, no metrics.json) is continued as by
    ``resume=true``.
    """
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("reuse", False) and ckpt_path in (None, "") and (output_dir / CHECKPOINT_DIR / LAST).is_file():
        log.info("reuse: %s holds an unfinished run; continuing it", output_dir)
        ckpt_path = "last"
    elif not cfg.get("resume", False) and ckpt_path in (None, ""):
        return None
    if cfg.get("resume", False) or str(ckpt_path) == "last":
        path = output_dir / CHECKPOINT_DIR / LAST
        if not path.is_file():
            raise UserError(
                f"resume: there is no {path}; resume in the interrupted run's directory: "
                "resume=true hydra.run.dir=outputs/<stage>/<date_time> (with the first run's overrides), "
                "or start from any checkpoint with ckpt_path=PATH"
            )
    else:
        path = Path(str(ckpt_path)).expanduser()
    checkpoint = load_checkpoint(path, mmap=True)  # the full check before any slow work; mmap keeps it cheap
    missing = [key for key in ("state_dict", "loops", "epoch", "global_step") if key not in checkpoint]
    if missing:
        raise UserError(
            f"{path}: not a training checkpoint (no {', '.join(missing)}); resume needs a last.ckpt or best.ckpt from "
            "a training run"
        )
    log.info("resuming from %s (epoch %s, step %s)", path, checkpoint["epoch"], checkpoint["global_step"])
    return path


def check_same_config(
    previous: Path,
    cfg: DictConfig,
    action: str = "resume",
    whose: str = "the interrupted run's",
    advice: str = "resume with the first run's overrides, or start a new run from the checkpoint with ckpt_path=PATH",
) -> None:
    """A resume (or a reuse) must stand for what the earlier run trained: same config except how it runs
    (RESUME_MAY_CHANGE)."""
    if not previous.is_file():
        return
    before = _flatten(OmegaConf.to_container(OmegaConf.load(previous), resolve=False))
    now = _flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(
        key
        for key in before.keys() | now.keys()
        # a key absent from an earlier run and null now (a key added since, such as pretrain's transfer) is the same
        if before.get(key) != now.get(key) and not _may_change(key)
    )
    if changed:
        shown = "; ".join(
            f"{key}: {before.get(key, '<absent>')!r} -> {now.get(key, '<absent>')!r}" for key in changed[:8]
        )
        raise UserError(
            f"{action}: the config differs from {whose} ({previous}): {shown}"
            f"{f' and {len(changed) - 8} more' if len(changed) > 8 else ''}; {advice}"
        )


def finished_run(cfg: DictConfig, output_dir: Path, weights: str) -> dict[str, Any] | None:
    """``reuse=true``: the metrics of a finished run of this very config in ``output_dir``, so the caller trains
    nothing.

    Finished means ``metrics.json`` and the ``weights`` file beside it. A finished run of another config is refused
    (naming the keys) before anything in the directory is touched; an empty or unfinished directory gives None.
    """
    metrics_path, config_path = output_dir / "metrics.json", output_dir / "config.yaml"
    if not cfg.get("reuse", False) or not (metrics_path.is_file() and (output_dir / weights).is_file()):
        return None
    if not config_path.is_file():
        raise UserError(
            f"reuse: {output_dir} holds a finished run but no config.yaml to check it against; choose another "
            "hydra.run.dir"
        )
    check_same_config(
        config_path,
        cfg,
        action="reuse",
        whose="the finished run's",
        advice=(
            "give this config its own directory (hydra.run.dir=..., STAGE1_DIR=... with make), "
            f"or delete {output_dir} to train it again"
        ),
    )
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(
            f"reuse: {metrics_path} is unreadable ({error.__class__.__name__}); delete {output_dir} to train it again"
        ) from None
    if not isinstance(metrics, dict):
        raise UserError(f"reuse: {metrics_path} is not a JSON object; delete {output_dir} to train it again")
    log.info("reuse: %s holds a finished run of this config; nothing trained", output_dir)
    return metrics


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_CHANGE)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: node}
