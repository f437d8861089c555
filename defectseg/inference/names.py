"""Output names for a run's photos that can never collide, whatever the photos are called.

A photo's outputs (``masks/NAME.png``, ``overlays/NAME.png``, ``probabilities/NAME.npy``...) are named from its whole
path relative to the input folder, subfolders kept: ``site/pier.v1.png`` -> ``site/pier.v1``. Only the image extension
goes, and it comes back where two photos would otherwise share a name (``a.jpg`` and ``a.png`` -> ``a_jpg``, ``a_png``).
Every name is checked against every name already taken, case-insensitively (macOS and Windows file systems fold
case), so a de-duplicating suffix can never land on another photo's name (``a.png``, ``a_png.png``).
Output files are built as ``f"{name}.png"``: never ``Path.with_suffix``, which cuts ``pier.v1`` at its last dot.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath


def input_root(pattern: str, paths: Sequence[Path]) -> Path:
    """The folder names are taken relative to: the input folder, a single photo's folder, or a glob's common parent."""
    given = Path(pattern).expanduser()
    if given.is_dir():
        return given
    if given.is_file() or not paths:
        return given.parent
    if glob.has_magic(str(given)):
        return Path(os.path.commonpath([str(p.parent.absolute()) for p in paths]))
    return given.parent


def relative_name(path: Path, root: Path) -> PurePosixPath:
    """``path`` relative to ``root`` as a POSIX path (a photo outside ``root`` keeps its file name only)."""
    try:
        relative = path.absolute().relative_to(root.absolute())
    except ValueError:
        relative = Path(path.name)
    parts = [part for part in relative.parts if part not in ("", ".", "..")]
    return PurePosixPath(*parts) if parts else PurePosixPath(path.name)


def _without_extension(relative: PurePosixPath) -> str:
    name = relative.name
    stem = name[: -len(relative.suffix)] if relative.suffix and len(relative.suffix) < len(name) else name
    return str(relative.parent / stem) if str(relative.parent) != "." else stem


def output_names(paths: Sequence[Path], root: Path) -> list[str]:
    """One distinct output name per photo (POSIX, relative, no extension), in the order of ``paths``."""
    relatives = [relative_name(path, root) for path in paths]
    first_choice = [_without_extension(relative) for relative in relatives]
    shared = Counter(name.casefold() for name in first_choice)
    wanted = [
        name if shared[name.casefold()] == 1 else f"{name}_{relative.suffix.lstrip('.') or 'noext'}"
        for name, relative in zip(first_choice, relatives)
    ]
    reserved = Counter(name.casefold() for name in wanted)
    taken: set[str] = set()
    names = []
    for name in wanted:
        candidate, number = name, 2
        while candidate.casefold() in taken or (candidate != name and candidate.casefold() in reserved):
            candidate, number = f"{name}_{number}", number + 1
        taken.add(candidate.casefold())
        names.append(candidate)
    return names
