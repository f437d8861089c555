"""Hydra callbacks (conf/hydra/default.yaml). Light on purpose: every entry point loads them, the ONNX-only predict too,
so nothing here imports torch or Lightning."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


class KeepFinishedRunFiles(Callback):
    """Hydra writes ``.hydra/`` (config, overrides) into the run directory before the stage starts.

    With ``reuse=true`` and a finished run there (defectseg.training.checkpoints.finished_run), that would replace
    the finished run's record of how it was made by this call's, even when the call is refused for another
    config. For such a call Hydra skips it, so the finished run's files stay as they were.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("reuse", False):
            return
        if (Path(str(config.hydra.run.dir)) / "metrics.json").is_file():
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None


class GuardRunDirectory(Callback):
    """Before Hydra creates the run directory and writes ``.hydra/`` into it.

    A run or sweep directory that names an existing file gets one line instead of Hydra's traceback. A run directory
    that a live run holds (defectseg.utils.run_directory) keeps that run's ``.hydra/``: this call writes none there,
    and the stage then refuses it, naming the owner.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from defectseg.utils.run_directory import holder_of, is_first_process

        run_dir = _usable_directory(config, "hydra.run.dir")
        if is_first_process() and holder_of(run_dir) is not None:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _usable_directory(config, "hydra.sweep.dir")


def _usable_directory(config: DictConfig, key: str) -> Path:
    from defectseg.utils.errors import UserError
    from defectseg.utils.run_directory import make_output_dir

    path = Path(str(OmegaConf.select(config, key)))
    try:
        return make_output_dir(path, key)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


class RunDirFromOutputDir(Callback):
    """``output_dir=DIR`` on the command line makes DIR the run directory, so Hydra's ``.hydra/`` and the log go there
    too (not into ``outputs/<stage>/<date>/``). A DIR that is an existing file is refused in one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = config.hydra.overrides.task or []
        if not any(str(o).lstrip("+~").partition("=")[0] == "output_dir" for o in overrides):
            return
        output_dir = _usable_directory(config, "output_dir")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(output_dir)
