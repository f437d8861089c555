"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_writer(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Yield a temp file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    handle = os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")
    try:
        yield handle
        if not handle.closed:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        os.replace(tmp_name, path)
    except BaseException:
        if not handle.closed:
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path, binary=True) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def point_latest(link: str | Path, run_dir: str | Path, output_root: str | Path) -> bool:
    """Point a ``latest`` link at ``run_dir``, but only for a run inside ``output_root``.

    A run whose outputs go elsewhere (``hydra.run.dir`` or ``paths.output_dir`` outside the output root: a benchmark,
    a test, a scratch experiment) must not move the pointer that stage 2, predict and export follow by default.
    """
    run_dir, root = Path(run_dir).resolve(), Path(output_root).resolve()
    if not run_dir.is_relative_to(root):
        return False
    point_link(link, run_dir)
    return True


def point_link(link: str | Path, target: str | Path) -> None:
    """Atomically make ``link`` a relative symlink to ``target`` (the stable 'latest' pointer)."""
    link, target = Path(link), Path(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(target.resolve(), link.parent.resolve())
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(relative, tmp, target_is_directory=True)
    os.replace(tmp, link)
