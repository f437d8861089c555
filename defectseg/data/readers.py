"""Reading data sets from folders, with errors that name the file and what is wrong.

The same readers serve the embedded synthetic sets and users' own folders, so the
generated data is exercised through exactly the code real data goes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data set problem a user can fix: the message names the file or folder."""

    @classmethod
    def listing(cls, problems: Sequence[str], where: str | Path, limit: int = 10) -> DataError:
        """One error for many problems found in one pass, so a user can fix them all at once."""
        shown = "\n  ".join(problems[:limit]) + (f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else "")
        return cls(f"{len(problems)} problem(s) in {where}:\n  {shown}")


def shorten(items: Sequence[object], limit: int = 5) -> str:
    return ", ".join(str(i) for i in items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    suffixes = {e.lower() for e in extensions}
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _require_dir(folder: Path, what: str) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder does not exist")
    return folder


def scan_classification_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """One subfolder per class (``Positive/``, ``Negative/`` ...); labels follow ``classes`` or sorted names."""
    root = _require_dir(Path(root), "classification data set")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes else found
    unknown = [name for name in names if name not in found]
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not found (found: {found or 'no subfolders'})")
    if len(names) < 2:
        raise DataError(f"{root}: needs at least two class subfolders (e.g. Positive/ and Negative/), found {found or 'none'}")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        files = list_images(root / name)
        if not files:
            raise DataError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((path, label) for path in files)
    return samples, names


def scan_segmentation_folder(root: str | Path, image_dir: str = "images", mask_dir: str = "masks", mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """Pair ``images/x.*`` with ``masks/x{mask_suffix}.*`` by file stem; every image must have a mask."""
    root = _require_dir(Path(root), "segmentation data set")
    images = list_images(_require_dir(root / image_dir, "image"))
    masks = list_images(_require_dir(root / mask_dir, "mask"))
    if not images:
        raise DataError(f"{root / image_dir}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_by_stem: dict[str, Path] = {}
    for mask in masks:
        stem = mask.stem[: -len(mask_suffix)] if mask_suffix and mask.stem.endswith(mask_suffix) else mask.stem
        if stem in mask_by_stem:
            raise DataError(f"{mask}: two masks for image stem {stem!r} ({mask_by_stem[stem].name} and {mask.name})")
        mask_by_stem[stem] = mask
    pairs, missing, seen = [], [], set()
    for image in images:
        if image.stem in seen:
            raise DataError(f"{image}: two images share the stem {image.stem!r}")
        seen.add(image.stem)
        mask = mask_by_stem.get(image.stem)
        if mask is None:
            missing.append(image)
        else:
            pairs.append((image, mask))
    if missing:
        raise DataError(f"{len(missing)} image(s) without a mask in {root / mask_dir}: {shorten(missing)}")
    return pairs


def find_split_folders(root: str | Path) -> dict[str, Path] | None:
    """Explicit ``train/ val/ test/`` subfolders, when the data set ships its own split."""
    root = Path(root)
    present = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if not present:
        return None
    if "train" not in present:
        raise DataError(f"{root}: has split folder(s) {sorted(present)} but no train/")
    return present


def read_image(path: str | Path) -> np.ndarray:
    """Decode to HxWx3 uint8 RGB; greyscale, palette, 16-bit and alpha images are converted explicitly."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                peak = array.max() if array.size else 0
                scale = 255.0 / (65535.0 if peak > 255 else 255.0)
                array = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(array[..., None], 3, axis=2)
            if mode == "RGBA" or mode == "LA" or (mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA").convert("RGB")
            elif mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from error


def read_mask_values(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to its raw HxW values (palette PNGs give their indices, not colours).

    Grey RGB masks are accepted as one channel; colour masks are refused. ``expected_size``
    is the image's (height, width).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise DataError(f"{path}: colour mask (mode {image.mode}); masks must be single-channel (0/255, 0/1 or class indices)")
                array = rgb[..., 0]
            else:
                array = np.asarray(image)  # mode P: palette indices are class indices
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read mask ({error})") from error
    if array.ndim != 2:
        raise DataError(f"{path}: mask has shape {array.shape}, expected a single channel")
    if expected_size is not None and tuple(array.shape) != tuple(expected_size):
        raise DataError(f"{path}: mask is {array.shape[1]}x{array.shape[0]} but its image is {expected_size[1]}x{expected_size[0]} (width x height)")
    return array


def binary_mask(array: np.ndarray, source: str | Path) -> np.ndarray:
    """0/1 or 0/255 values (soft 8-bit edges thresholded at 128) to {0, 1}; anything else is refused, not guessed."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    peak = int(array.max()) if array.size else 0
    if peak <= 1:
        return array.astype(np.uint8)
    if peak == 255 or (array.dtype == np.uint16 and peak == 65535):
        return (array >= (peak + 1) // 2).astype(np.uint8)
    values = np.unique(array)
    raise DataError(
        f"{source}: mask values {values[:8].tolist()}{'...' if values.size > 8 else ''} are neither 0/1 nor 0/255 "
        "(a class-index mask? read it with a layout that has mask_values=classes, see README: Real data and public layouts)"
    )


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a binary mask to HxW uint8 in {0, 1}.

    Accepted: 0/1 or 0/255 values, and 8-bit masks with soft (anti-aliased, JPEG) edges,
    thresholded at 128. Anything else (e.g. class indices 0..k) is refused rather than guessed.
    ``expected_size`` is the image's (height, width).
    """
    return binary_mask(read_mask_values(path, expected_size), path)
