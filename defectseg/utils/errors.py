"""Errors a user can fix, and the entry-point guard that prints them as one clear line.

Only our own types get the one-line treatment: ``UserError`` and its subclasses (``ConfigError`` for a config
value, ``MissingFileError`` for a path the user gave, ``defectseg.data.readers.DataError`` for a data set,
``defectseg.models.encoder_io.EncoderMismatchError`` for stage-1 weights). Any other exception is a bug of ours
and keeps its traceback. Raise the narrowest type that fits, with a message naming the key, file or folder.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
# Set beside HYDRA_FULL_ERROR=1 by defectseg.config.entry, which needs Hydra to raise; the user did not ask for traces.
FORCED_FULL_ERROR = "DEFECTSEG_FORCED_HYDRA_FULL_ERROR"


class UserError(Exception):
    """Something the user must do differently (run a stage first, fix a path or a key)."""

    label = "error"
    exit_code = 2


class UnsafeFileError(UserError):
    """A file whose pickle would run code when loaded: refused before any of it runs (defectseg.utils.safe_load)."""


class ConfigError(UserError, ValueError):
    """A config key holds a value the code cannot use; the message starts with the key (``optim.lr: ...``)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a stage they must run first) is not there."""


class FolderInUseError(UserError, FileExistsError):
    """A folder the user named holds files of theirs that this run would have to overwrite."""


class RunInterrupted(UserError):
    """Training stopped on a signal after saving what a resume needs; exits 128 + signal like the shell would."""

    label = "stopped"

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)


def user_error_in(error: BaseException) -> UserError | None:
    """The user error itself, also when Hydra's instantiate wrapped it (a model or data module refusing its config)."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, UserError) else None


def exit_cleanly_on_user_error(function: F) -> F:
    """Print ``error: ...`` and exit 2 instead of a stack trace for problems the user can fix.

    HYDRA_FULL_ERROR=1 shows the trace of those too.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SystemExit as stop:
            if type(stop).__name__ != "SIGTERMException":
                raise
            # Lightning's SIGTERM stop outside fit (Run.fit handles its own): exit as killed, not 0 ("success").
            print(
                "stopped: SIGTERM after training; its checkpoints are complete: "
                "re-run with resume=true and the same hydra.run.dir to finish",
                file=sys.stderr,
            )
            raise SystemExit(128 + signal.SIGTERM) from None
        except Exception as error:
            cause = user_error_in(error)
            if cause is None or (os.environ.get("HYDRA_FULL_ERROR") == "1" and FORCED_FULL_ERROR not in os.environ):
                raise
            logging.getLogger("defectseg").debug("user error", exc_info=True)
            print(f"{cause.label}: {cause}", file=sys.stderr)
            raise SystemExit(cause.exit_code) from None

    return wrapper  # type: ignore[return-value]
