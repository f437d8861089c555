"""Hydra callbacks (conf/hydra/default.yaml). Light on purpose: every entry point loads them, the ONNX-only predict too,
so nothing here imports torch or Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


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
