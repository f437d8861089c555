"""The fault corpus's bad inputs: crafted pickles that would run code, and broken files of every loader's kind.

Each maker writes one file into a folder and returns its path; tests/test_faults.py feeds every one to every loader
(parametrised, so pytest's count of test_faults.py items is the count of faults tried).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch


class WritesAFile:
    """A pickle payload: unpickling it creates the marker file (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsACommand:
    """A payload that would run a shell command (``touch`` the marker): the classic os.system pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint_like(payload: object) -> dict:
    """What a training checkpoint holds, with the payload tucked into one value."""
    return {"state_dict": {"model.w": torch.zeros(4)}, "epoch": 0, "global_step": 3, "loops": {}, "extra": payload}


def crafted_in_a_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(_checkpoint_like(WritesAFile(marker)), path)
    return path


def crafted_os_system(path: Path, marker: Path) -> Path:
    torch.save(_checkpoint_like(RunsACommand(marker)), path)
    return path


def crafted_in_a_state_dict(path: Path, marker: Path) -> Path:
    """A weights file (names -> tensors) where one 'tensor' is the payload."""
    torch.save({"w": torch.zeros(2), "b": WritesAFile(marker)}, path)
    return path


def crafted_legacy_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle, not torch's zip format (what ``pickle.dump`` or old ``torch.save`` writes)."""
    with open(path, "wb") as handle:
        pickle.dump(_checkpoint_like(RunsACommand(marker)), handle, protocol=2)
    return path


CRAFTED: dict[str, Callable[[Path, Path], Path]] = {
    "payload_in_checkpoint": crafted_in_a_checkpoint,
    "os_system_in_checkpoint": crafted_os_system,
    "payload_in_state_dict": crafted_in_a_state_dict,
    "legacy_pickle": crafted_legacy_pickle,
}


def _good_bytes(path: Path) -> bytes:
    torch.save(_checkpoint_like(None) | {"state_dict": {"model.w": torch.zeros(2000)}}, path)
    return path.read_bytes()


def broken_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def broken_head_only(path: Path) -> Path:
    path.write_bytes(_good_bytes(path)[:300])
    return path


def broken_tail_cut(path: Path) -> Path:
    path.write_bytes(_good_bytes(path)[:-100])
    return path


def broken_random_bytes(path: Path) -> Path:
    path.write_bytes(hashlib.sha256(b"defectseg").digest() * 40)
    return path


def broken_text(path: Path) -> Path:
    path.write_text("model: not a checkpoint\n")
    return path


def broken_not_a_dict(path: Path) -> Path:
    torch.save([torch.zeros(2)], path)
    return path


BROKEN: dict[str, Callable[[Path], Path]] = {
    "empty": broken_empty,
    "truncated_head": broken_head_only,
    "truncated_tail": broken_tail_cut,
    "random_bytes": broken_random_bytes,
    "text": broken_text,
    "list_of_tensors": broken_not_a_dict,
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> sha256: 'nothing already written is lost' compares two."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
