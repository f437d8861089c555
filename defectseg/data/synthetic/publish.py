"""Publishing the synthetic sets: folders laid out like the real sets, manifests, and crash-safe ``ensure_*``.

Image ``i`` is drawn from ``default_rng`` seeded by ``(seed, stage, [label,] i)``: it is the same whatever the set
size, so a larger set extends a smaller one. ``ensure_*`` generate into a hidden sibling folder under a file lock
(:mod:`filelock`, one per set folder) and rename it into place, so an interrupted run never leaves a folder that looks
complete and two processes asking for one set generate it once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from defectseg.data.synthetic.concrete import concrete_sample
from defectseg.data.synthetic.render import Array
from defectseg.data.synthetic.steel import check_conditions, check_defect_set, steel_labelled
from defectseg.utils.errors import ConfigError, FolderInUseError

log = logging.getLogger(__package__)  # "defectseg.data.synthetic", whichever module of the package logs

CRACK_CLASSIFICATION = "crack_classification"
STEEL_SEGMENTATION = "steel_segmentation"
CRACK_SEGMENTATION = "crack_segmentation"
#: Bump whenever the pictures change, so ``ensure_*`` regenerates sets made by older code.
VERSION = 1
MANIFEST_NAME = "GENERATED.json"
CLASS_DIRS = ("Positive", "Negative")  # Kaggle "Surface Crack Detection" layout
STEEL_SUBDIRS = ("images", "masks", "labels")  # labels/: each defect's kind as a class index (dataset.classes)
_FILE_RE = re.compile(r"^\d{5,}\.png$")

# --------------------------------------------------------------------------------------------
# Writing sets, manifests, idempotent + atomic ensure_*
# --------------------------------------------------------------------------------------------


def _save_png(array: Array, path: Path) -> None:
    Image.fromarray(array).save(
        path, format="PNG", compress_level=1
    )  # noisy pictures barely compress; level 1 is 5x faster than 6


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from defectseg.utils.logs import interactive

    if enabled and interactive():  # in a log file a bar is garbage; the "generating ..." line says what happens
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional
            pass
        else:
            return tqdm(total=total, desc=desc, unit="img", leave=False)
    return contextlib.nullcontext(_NoBar())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


_PARALLEL_FROM = 256  # below this many images, starting worker processes costs more than it saves


def _resolve_workers(workers: int | None, jobs: int) -> int:
    """None/1: this process. 0: one process per CPU for sets of 256+ images. n: n processes."""
    if workers is None or int(workers) == 1:
        return 1
    if int(workers) > 1:
        return int(workers)
    if jobs < _PARALLEL_FROM:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))  # respects container / taskset limits
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _write_concrete(root: str, seed: int, label: int, index: int, size: int) -> None:
    _save_png(concrete_sample(seed, label, index, size)[0], Path(root) / CLASS_DIRS[1 - label] / f"{index:05d}.png")


def _write_concrete_masked(root: str, seed: int, label: int, index: int, size: int) -> None:
    """Crack photo ``index`` as file ``2 * index``, its no-crack twin as ``2 * index + 1``: a larger set extends a
    smaller one."""
    image, mask = concrete_sample(seed, label, index, size)
    name = f"{2 * index + (1 - label):05d}.png"
    _save_png(image, Path(root) / "images" / name)
    _save_png(mask.astype(np.uint8) * 255, Path(root) / "masks" / name)


def _write_steel(root: str, seed: int, index: int, size: int, conditions: str, defect_set: str) -> None:
    image, labels, _ = steel_labelled(seed, index, size, conditions=conditions, defect_set=defect_set)
    _save_png(image, Path(root) / "images" / f"{index:05d}.png")
    _save_png((labels > 0).astype(np.uint8) * 255, Path(root) / "masks" / f"{index:05d}.png")
    _save_png(labels, Path(root) / "labels" / f"{index:05d}.png")


def _star(job: tuple[Callable[..., None], tuple[Any, ...]]) -> None:
    job[0](*job[1])


def _run_jobs(
    fn: Callable[..., None], jobs: list[tuple[Any, ...]], desc: str, progress: bool, workers: int | None
) -> None:
    """Run the per-image jobs here or in worker processes (every image has its own seed, so the
    files are identical either way). Workers are opt-in: they are started with 'spawn' (the caller
    may hold torch / data-loader threads a forked child must not inherit), and 'spawn' re-imports
    the caller's main script, which must then guard its code with ``if __name__ == "__main__":``."""
    n_workers = _resolve_workers(workers, len(jobs))
    with _progress(len(jobs), desc, progress) as bar:
        if n_workers == 1:
            for job in jobs:
                fn(*job)
                bar.update(1)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
            chunk = max(1, min(32, len(jobs) // (4 * n_workers)))
            for _ in pool.map(_star, [(fn, job) for job in jobs], chunksize=chunk):
                bar.update(1)


def _check_params(n: int, size: int, seed: int, what: str) -> None:
    if int(n) < 1:
        raise ConfigError(f"{what} must be at least 1, got {n}")
    if int(size) < 16:
        raise ConfigError(f"size must be at least 16 px, got {size}")
    if int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")


def _start_writing(root: Path, subdirs: Iterable[str]) -> None:
    """Drop the manifest first: from here until the new one is written the folder is not 'complete'."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in subdirs:
        (root / sub).mkdir(exist_ok=True)


def _remove_stale(folder: Path, keep: int) -> None:
    """Remove generated files numbered ``keep`` or above, left by an earlier, larger set."""
    for p in folder.iterdir():
        if _FILE_RE.match(p.name) and int(p.stem) >= keep:
            p.unlink()


def _write_manifest(root: Path, generator: str, params: dict[str, Any], count: int) -> None:
    data = {"generator": generator, "version": VERSION, "params": params, "count": count}
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The ``GENERATED.json`` of a generated set, or None for a folder that is not one (or is partial)."""
    try:
        data = json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def generate_crack_classification(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the stage-1 set: ``root/Positive/*.png`` (crack) and ``root/Negative/*.png``, then the manifest.

    Writes in place; use :func:`ensure_crack_classification` for the idempotent, crash-safe version.
    ``workers``: None or 1 generate in this process; n > 1 uses n worker processes, 0 one per CPU
    for sets of 256+ images (from a script, only under ``if __name__ == "__main__":``). The files
    are the same either way.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    root, n, size, seed = Path(root).expanduser(), int(n_per_class), int(size), int(seed)
    log.debug("writing %d crack / %d no-crack images of %d px into %s", n, n, size, root)
    _start_writing(root, CLASS_DIRS)
    jobs = [(str(root), seed, label, i, size) for i in range(n) for label in (1, 0)]
    _run_jobs(_write_concrete, jobs, "crack set", progress, workers)
    for name in CLASS_DIRS:
        _remove_stale(root / name, n)
    _write_manifest(root, CRACK_CLASSIFICATION, {"n_per_class": n, "size": size, "seed": seed}, 2 * n)
    return root


def generate_steel_segmentation(
    root: str | Path,
    n_images: int = 175,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    conditions: str = "clean",
    defect_set: str = "mixed",
) -> Path:
    """Write the stage-2 set: ``root/images/*.png`` (RGB), ``root/masks/*.png`` (L, 0/255) and ``root/labels/*.png``
    (L, class indices of :data:`SYNTHETIC_CLASSES`), then the manifest.

    Writes in place; use :func:`ensure_steel_segmentation` for the idempotent, crash-safe version.
    ``workers`` as in :func:`generate_crack_classification`; ``conditions``: one of :data:`CONDITIONS`;
    ``defect_set``: one of :data:`DEFECT_SETS`.
    """
    _check_params(n_images, size, seed, "n_images")
    check_conditions(conditions)
    check_defect_set(defect_set)
    root, n, size, seed = Path(root).expanduser(), int(n_images), int(size), int(seed)
    log.debug(
        "writing %d steel images of %d px (%s conditions, %s defects) into %s", n, size, conditions, defect_set, root
    )
    _start_writing(root, STEEL_SUBDIRS)
    _run_jobs(
        _write_steel,
        [(str(root), seed, i, size, conditions, defect_set) for i in range(n)],
        "steel set",
        progress,
        workers,
    )
    for name in STEEL_SUBDIRS:
        _remove_stale(root / name, n)
    _write_manifest(
        root,
        STEEL_SEGMENTATION,
        {
            **{"n_images": n, "size": size, "seed": seed},
            "conditions": conditions,
            "defect_set": defect_set,
            "labels": True,
        },
        n,
    )
    return root


def generate_crack_segmentation(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the stage-1 photos with crack masks (``pretrain_task=segmentation``): ``root/images/*.png`` +
    ``root/masks/*.png``.

    The photos are those of :func:`generate_crack_classification` with the same parameters, so the
    classification and segmentation objectives can be compared on identical images; a photo without
    a crack has an empty mask. ``workers`` as in :func:`generate_crack_classification`.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    root, n, size, seed = Path(root).expanduser(), int(n_per_class), int(size), int(seed)
    log.debug("writing %d crack / %d no-crack images with masks of %d px into %s", n, n, size, root)
    _start_writing(root, ("images", "masks"))
    jobs = [(str(root), seed, label, i, size) for i in range(n) for label in (1, 0)]
    _run_jobs(_write_concrete_masked, jobs, "crack mask set", progress, workers)
    for name in ("images", "masks"):
        _remove_stale(root / name, 2 * n)
    _write_manifest(root, CRACK_SEGMENTATION, {"n_per_class": n, "size": size, "seed": seed}, 2 * n)
    return root


def _count_files(root: Path, subdirs: Sequence[str]) -> int:
    try:
        return sum(1 for sub in subdirs for p in (root / sub).iterdir() if _FILE_RE.match(p.name))
    except OSError:
        return -1


def _is_complete(
    root: Path, generator: str, params: dict[str, Any], count: int, subdirs: Sequence[str], per_dir: int
) -> bool:
    data = read_manifest(root)
    return (
        data is not None
        and data.get("generator") == generator
        and data.get("version") == VERSION
        and data.get("params") == params
        and data.get("count") == count
        and _count_files(root, subdirs) == per_dir * len(subdirs)
    )


def _replaceable(root: Path, generator: str, subdirs: Sequence[str]) -> bool:
    """True for an empty folder, an older set of this generator, or a half-written one (only our files)."""
    if not root.is_dir():
        return False
    data = read_manifest(root)
    if data is not None and data.get("generator") == generator:
        return True
    for entry in root.iterdir():
        if entry.name == f".{MANIFEST_NAME}.tmp":
            continue
        if not (entry.is_dir() and entry.name in subdirs and all(_FILE_RE.match(p.name) for p in entry.iterdir())):
            return False
    return True


def _ensure(
    root: str | Path,
    generator: str,
    params: dict[str, Any],
    count: int,
    subdirs: Sequence[str],
    per_dir: int,
    make: Callable[[Path], Path],
    description: str,
) -> Path:
    """Generate ``root`` unless it is complete: into ``.NAME.partial`` beside it, renamed into place.

    Under the set's file lock (``.NAME.lock`` beside it) one process generates while the others wait and then find it
    complete; scratch folders present when the lock is taken were left by a killed process and are removed.
    """
    root = Path(root).expanduser()
    if _is_complete(root, generator, params, count, subdirs, per_dir):
        return root
    if root.exists() and not _replaceable(root, generator, subdirs):
        # never delete what this module did not write: it may be someone's real data
        raise FolderInUseError(
            f"dataset.root={root}: the data set chosen is the embedded one, which generates its {generator} photos "
            f"there, but the folder holds other files (no matching {MANIFEST_NAME}). To read your own photos there, "
            "name their layout: dataset=folder_seg (images/ + masks/) or dataset=folder_cls (a folder per class), "
            "see docs/data.md; to generate the embedded set, choose an empty folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    partial, old = (root.parent / f".{root.name}.{tag}" for tag in ("partial", "old"))
    with FileLock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, generator, params, count, subdirs, per_dir):
            return root  # another process made it while this one waited
        _remove_scratch(root)
        log.info("generating synthetic %s set (%s) into %s", generator, description, root)
        try:
            make(partial)
            if root.exists():
                os.rename(root, old)
            try:
                os.rename(partial, root)
            except OSError:
                if old.is_dir() and not root.exists():
                    os.rename(old, root)  # put the previous set back: lose nothing already written
                raise
        finally:
            _remove_scratch(root)
    return root


def _remove_scratch(root: Path) -> None:
    """Remove ``root``'s scratch siblings (``.NAME.partial``, ``.NAME.old``, and the ``-PID-HEX`` ones of older
    versions): called under the set's lock, where no other process can be writing them."""
    pattern = re.compile(rf"^\.{re.escape(root.name)}\.(partial|old)(-\d+-[0-9a-f]{{8}})?$")
    with contextlib.suppress(OSError):
        for p in root.parent.iterdir():
            if pattern.match(p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def ensure_crack_classification(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the stage-1 set for these parameters; cheap when it already does.

    Generates into a hidden sibling folder and renames it into place, so an interrupted run never
    leaves a folder that looks complete. Refuses to replace a folder it did not generate.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    params = {"n_per_class": int(n_per_class), "size": int(size), "seed": int(seed)}
    return _ensure(
        root,
        CRACK_CLASSIFICATION,
        params,
        2 * int(n_per_class),
        CLASS_DIRS,
        int(n_per_class),
        lambda tmp: generate_crack_classification(tmp, progress=progress, workers=workers, **params),
        f"{n_per_class} crack + {n_per_class} no-crack images, {size} px, seed {seed}",
    )


def ensure_crack_segmentation(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the crack-mask set for these parameters (rules of
    :func:`ensure_crack_classification`)."""
    _check_params(n_per_class, size, seed, "n_per_class")
    params = {"n_per_class": int(n_per_class), "size": int(size), "seed": int(seed)}
    return _ensure(
        root,
        CRACK_SEGMENTATION,
        params,
        2 * int(n_per_class),
        ("images", "masks"),
        2 * int(n_per_class),
        lambda tmp: generate_crack_segmentation(tmp, progress=progress, workers=workers, **params),
        f"{n_per_class} crack + {n_per_class} no-crack images with masks, {size} px, seed {seed}",
    )


def ensure_steel_segmentation(
    root: str | Path,
    n_images: int = 175,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    conditions: str = "clean",
    defect_set: str = "mixed",
) -> Path:
    """Make sure ``root`` holds the stage-2 set for these parameters; cheap when it already does.

    Same crash-safety and refusal rules as :func:`ensure_crack_classification`.
    """
    _check_params(n_images, size, seed, "n_images")
    check_conditions(conditions)
    check_defect_set(defect_set)
    params = {
        "n_images": int(n_images),
        "size": int(size),
        "seed": int(seed),
        "conditions": conditions,
        "defect_set": defect_set,
    }
    wanted = {**params, "labels": True}  # sets made before labels/ existed are regenerated
    return _ensure(
        root,
        STEEL_SEGMENTATION,
        wanted,
        int(n_images),
        STEEL_SUBDIRS,
        int(n_images),
        lambda tmp: generate_steel_segmentation(tmp, progress=progress, workers=workers, **params),
        f"{n_images} images with masks, {size} px, seed {seed}, {conditions} conditions, {defect_set} defects",
    )
