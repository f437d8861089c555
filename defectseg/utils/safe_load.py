"""The one way defectseg reads a ``torch.save`` file (checkpoints, encoder weights, predict's and export's models).

``torch.load(weights_only=True)`` never runs pickled code, but its refusal is a screen of ANSI-coloured text ending in
"if you trust the source"; every loader calls :func:`torch_load_safely` instead, so an unsafe file gets the same one
line wherever it is given, naming the file and what it would have called. torch is imported when a file is read, so
importing this module stays light.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectseg.utils.errors import UnsafeFileError, UserError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def refusal(path: str | Path, what: str, detail: str) -> str:
    """The one-line refusal of a file whose pickle would run code (also for callers that find it another way)."""
    return (
        f"{path}: refused to load: this {what} holds Python objects that loading would execute ({detail}); "
        f"only {what}s of tensors and plain values, as defectseg writes them, are read"
    )


def torch_load_safely(
    path: str | Path, what: str = "checkpoint", map_location: Callable | str | None = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``; a file that would run code raises :class:`UnsafeFileError`, a truncated,
    empty or foreign one :class:`UserError`, each one line naming ``path``. ``mmap`` falls back to a plain read for
    files in torch's legacy (non-zip) format."""
    import torch

    path = Path(path).expanduser()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "Detected pickle protocol 4 ..." and other notes of the weights-only reader
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not (mmap and "mmap can only be used" in str(error)):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        if named:  # the weights-only reader stopped at a function or class the pickle names
            raise UnsafeFileError(refusal(path, what, f"it would call {named.group(1)}")) from None
        reason = "its pickle uses instructions a data-only reader does not accept"
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = _first_line(str(error)) or f"{type(error).__name__}: empty or cut short"
    raise UserError(f"{path}: not a readable {what}, truncated or not a {what} at all ({reason})")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0] if lines else ""
