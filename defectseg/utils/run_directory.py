"""A run directory belongs to one process at a time; an output folder must be a folder.

Two trainings into one directory (two shells given the same ``hydra.run.dir``, a sweep whose jobs share a folder)
would both write ``checkpoints/``, ``metrics.json`` and ``config.yaml`` and each report the other's results.
:func:`claim_run_directory` takes an OS file lock (``filelock``: ``flock`` on POSIX, released by the kernel when the
process dies, so a crashed or SIGKILLed run never leaves it stuck) and records who holds it, so a second run is
refused with one line naming the owner. Light on purpose: the Hydra callbacks use it, so no torch here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_text

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.owner.json"
# Environment variables that launchers (Lightning's DDP, torchrun, SLURM, LSF) set to a process's rank.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_held: dict[str, FileLock] = {}  # run directories this process holds, by resolved path
_used_by_sweep_jobs: set[str] = set()  # run directories earlier jobs of this process's multirun trained in


def is_first_process() -> bool:
    """False in the extra processes of a multi-process run (DDP ranks > 0): they share rank 0's run directory."""
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name) or 0) != 0:
                return False
        except ValueError:
            continue
    return True


def make_output_dir(path: str | Path, key: str = "output_dir") -> Path:
    """``path`` as a directory (created with its parents), or one line naming ``key`` when a file is in the way."""
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == path else f"cannot be created: {blocker} is a file"
        raise UserError(f"{key}={path} {where}; give a directory (an existing one or a new one) for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}={path}: cannot create the directory ({error.strerror or error})") from None
    return path


def holder_of(directory: str | Path) -> str | None:
    """Who holds ``directory`` now (one phrase), or None when nobody does; holds nothing itself."""
    directory = Path(directory)
    lock_path = directory / LOCK_NAME
    if not lock_path.is_file() or str(directory.resolve()) in _held:
        return None
    probe = FileLock(str(lock_path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return _describe_owner(directory)
    except OSError:
        return None  # a read-only or odd file system: nothing can be claimed there either, say nothing here
    probe.release()
    return None


class RunDirectoryLock:
    """This process's hold on a run directory; :meth:`release` gives it up (also at exit: the kernel drops it)."""

    def __init__(self, directory: Path, lock: FileLock) -> None:
        self.directory = directory
        self._lock = lock

    def release(self) -> None:
        key = str(self.directory.resolve())
        if _held.get(key) is not self._lock:
            return
        del _held[key]
        with contextlib.suppress(OSError):
            (self.directory / OWNER_NAME).unlink()
        self._lock.release()


def claim_run_directory(directory: str | Path, resume: bool = False, key: str = "hydra.run.dir") -> RunDirectoryLock:
    """Create and hold ``directory`` for this process, or refuse with one line naming the process that holds it.

    Also refused: a second job of one Hydra multirun in a directory an earlier job of it trained in (jobs that share
    a folder by mistake run one after the other in the basic launcher, each replacing the other's files). Once held,
    temporary files of atomic writes a killed run left behind are removed (nobody else can be writing them).
    """
    directory = make_output_dir(directory, key)
    resolved = str(directory.resolve())
    if _in_multirun():
        if resolved in _used_by_sweep_jobs:
            raise UserError(
                f"{directory}: an earlier job of this multirun already trained in this directory; "
                "every job needs its own (keep ${hydra.job.num} in hydra.sweep.subdir)"
            )
        _used_by_sweep_jobs.add(resolved)
    lock = _held.get(resolved)
    if lock is None:  # held already: by an earlier run of this very process that ended without releasing it
        # A second of patience: another command's GuardRunDirectory may be probing the lock at this very moment.
        lock = FileLock(str(directory / LOCK_NAME), timeout=1.0)
        try:
            lock.acquire()
        except Timeout:
            then = " resume=true once it has stopped," if resume else ""
            raise UserError(
                f"{directory}: this run directory is in use by {_describe_owner(directory)}; a second run would "
                f"overwrite its checkpoints and metrics: wait for it to finish,{then} or give this run its own {key}"
            ) from None
        _held[resolved] = lock
    atomic_write_text(directory / OWNER_NAME, json.dumps(_owner(), indent=2) + "\n")
    remove_stale_temporary_files(directory)
    return RunDirectoryLock(directory, lock)


def remove_stale_temporary_files(directory: Path) -> list[Path]:
    """Delete ``.NAME.XXXX.tmp`` files (defectseg.utils.io's atomic writes) a killed run left in ``directory``.

    Call only while holding the directory: then no write of another process can be in flight.
    """
    stale = [path for path in directory.rglob(".*.tmp") if path.is_file() and not path.is_symlink()]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    if stale:
        log.info(
            "removed %d temporary file(s) left by an interrupted write: %s",
            len(stale),
            ", ".join(str(p.relative_to(directory)) for p in stale[:5]),
        )
    return stale


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": _command_line(),
    }


def _describe_owner(directory: Path) -> str:
    try:
        owner = json.loads((directory / OWNER_NAME).read_text(encoding="utf-8"))
        return (
            f"pid {owner['pid']} on {owner['host']}, started {owner['start_time']}: {_shorten(str(owner['command']))}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (it has not recorded itself in {directory / OWNER_NAME} yet)"


def _command_line() -> str:
    """``python -m defectseg.finetune seed=1 ...`` as typed (``sys.argv[0]`` is the module's file under ``-m``)."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if program.suffix == ".py" and program.parent.name == "defectseg":
        return " ".join(["python -m", f"defectseg.{program.stem}", *sys.argv[1:]])
    return " ".join([Path(sys.executable).name, *sys.argv])


def _shorten(command: str, limit: int = 1000) -> str:
    """Head and tail of a long command line: the stage and the last overrides (seed, ...) tell runs apart."""
    return command if len(command) <= limit else f"{command[: limit // 2]} ... {command[-limit // 2 :]}"


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
