"""Quiet, plain logs: third-party noise filtered, progress bars only where a person watches a terminal.

A saved log (``make compare > log``, SLURM, Hydra's ``<run>.log``) must read as lines: a progress bar redraws itself
with carriage returns and, nested, with cursor movements that turn a file into garbage. Imported by the training
runner and the data generator; light on purpose (no torch).
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings

# TensorBoard imports TensorFlow when it is installed (never needed to write event files): ~20 s and a screen of
# oneDNN / CPU-feature banners per run. Its documented "no TensorFlow" switch is the module below; with it TensorBoard
# uses its own stub, as on every machine without TensorFlow.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Messages of other packages that say nothing about this run.
NOISE_WARNINGS = (
    r".*is smaller than the logging interval.*",  # tiny data sets: nothing wrong, the logger just logs per epoch
    r".*is not supported by the model summary.*",  # bf16: the summary's size estimate, which we do not show
    r".*LeafSpec.*is deprecated.*",  # Lightning's own use of a torch API
    r".*configured with multiple `ModelCheckpoint` callbacks.*",  # best.ckpt + last.ckpt, by design
    r".*does not have many workers which may be a bottleneck.*",  # num_workers=auto chose 0 on purpose (docs/speed.md)
)
NOISE_LOG_PREFIXES = ("💡 Tip:",)  # Lightning's advertising for its cloud products


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE_LOG_PREFIXES)


def quiet_third_party() -> None:
    """Filter the known noise once per process; real warnings (ours, unknown ones) still show."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def interactive(stream=None) -> bool:
    """True when progress bars would be seen live: the stream is a terminal, not a file or a pipe."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
