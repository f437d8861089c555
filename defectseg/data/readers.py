"""Reading data sets from folders, with errors that name the file and what is wrong.

The same readers serve the embedded synthetic sets and users' own folders, so the
generated data is exercised through exactly the code real data goes through.

What is read, and how (never guessed silently):

- images: RGB as is; greyscale (``L``, ``1``) and palette (``P``) expanded to RGB; alpha
  (``RGBA``, ``LA``, ``PA``) dropped, transparent pixels keep their stored colour; CMYK and
  YCbCr converted; 16-bit (``I;16``) scaled by 255/65535 for every image alike, so all
  images of a set share one intensity scale; 32-bit integer images only when their values
  fit in 16 bits. Refused: float images (``F``), multi-page / animated files.
- masks: one channel (or grey RGB) with values 0/1, 0/255 or 0/65535, or 8-bit with soft
  (anti-aliased, JPEG) edges, thresholded at half range. Refused: colour masks (``mask_values: colors``
  reads them), class-index masks (0..k; ``mask_values: classes`` reads them, VOC's {0, 1, 255} included),
  gradients (mid-range values away from edges), 12-bit data in 16-bit files, masks with transparency,
  float masks, multi-page files.
- files are identified by content, not extension; a file PIL cannot decode fully
  (zero bytes, truncated, not an image) is refused with the decoder's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from defectseg.utils.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataError(UserError, ValueError):
    """A data set problem a user can fix: the message names the file or folder.

    ``kind`` sorts problems in reports (``unreadable``, ``unsupported``, ``mask_size``,
    ``mask_values``, ``missing_mask``, ``layout``).
    """

    def __init__(self, message: str, kind: str = "layout") -> None:
        super().__init__(message)
        self.kind = kind

    @classmethod
    def listing(cls, problems: Sequence[str], where: str | Path, limit: int = 10, kind: str = "layout") -> DataError:
        """One error for many problems found in one pass, so a user can fix them all at once."""
        shown = "\n  ".join(problems[:limit]) + (
            f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        )
        return cls(f"{len(problems)} problem(s) in {where}:\n  {shown}", kind=kind)


def shorten(items: Sequence[object], limit: int = 5) -> str:
    return ", ".join(str(i) for i in items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    suffixes = {e.lower() for e in extensions}
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _require_dir(folder: Path, what: str) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder does not exist")
    return folder


def scan_classification_folder(
    root: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """One subfolder per class (``Positive/``, ``Negative/`` ...); labels follow ``classes`` or sorted names."""
    root = _require_dir(Path(root), "classification data set")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes else found
    if not classes and {"images", "masks"} <= set(found):
        raise DataError(
            f"{root}: holds images/ and masks/, a segmentation set, but this data set reads one folder per class "
            "(e.g. Negative/ and Positive/): for stage 2 use dataset=folder_seg; to pretrain on masks, "
            "pretrain_task=segmentation dataset=folder_seg"
        )
    unknown = [name for name in names if name not in found]
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not found (found: {found or 'no subfolders'})")
    if len(names) < 2:
        raise DataError(
            f"{root}: needs at least two class subfolders (e.g. Positive/ and Negative/), found {found or 'none'}"
        )
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        files = list_images(root / name)
        if not files:
            raise DataError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((path, label) for path in files)
    return samples, names


def scan_segmentation_folder(
    root: str | Path, image_dir: str = "images", mask_dir: str = "masks", mask_suffix: str = ""
) -> list[tuple[Path, Path]]:
    """Pair ``images/x.*`` with ``masks/x{mask_suffix}.*`` by file stem; every image must have a mask."""
    pairs, missing, _ = pair_segmentation_folder(root, image_dir, mask_dir, mask_suffix)
    if missing:
        raise DataError(
            f"{len(missing)} image(s) without a mask in {Path(root) / mask_dir}: {shorten(missing)}",
            kind="missing_mask",
        )
    return pairs


def pair_segmentation_folder(
    root: str | Path, image_dir: str = "images", mask_dir: str = "masks", mask_suffix: str = ""
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(image, mask) pairs by file stem, plus the images without a mask and the masks without an image."""
    root = _require_dir(Path(root), "segmentation data set")
    if not (root / image_dir).is_dir():
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        hint = (
            f"; it holds images itself: dataset.root is the folder above, which holds {image_dir}/ and {mask_dir}/"
            if list_images(root)
            else f" (it holds {', '.join(found[:6]) or 'no folders'}); other layouts: docs/data.md"
        )
        raise DataError(f"dataset.root={root}: no {image_dir}/ folder in it{hint}")
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
    orphans = [mask for stem, mask in mask_by_stem.items() if stem not in seen]
    return pairs, missing, orphans


def find_split_folders(root: str | Path) -> dict[str, Path] | None:
    """Explicit ``train/ val/ test/`` subfolders, when the data set ships its own split."""
    root = Path(root)
    present = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if not present:
        return None
    if "train" not in present:
        raise DataError(f"{root}: has split folder(s) {sorted(present)} but no train/")
    return present


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open and fully decode one single-frame file; every decoder failure becomes a DataError naming the file."""
    try:
        image = Image.open(path)
        try:
            if getattr(image, "n_frames", 1) > 1:
                raise DataError(
                    f"{path}: {what} file holds {image.n_frames} frames (multi-page or animated); "
                    "save each as its own file",
                    kind="unsupported",
                )
            image.load()
        except BaseException:
            image.close()
            raise
    except DataError:
        raise
    except Exception as error:
        reason = str(error) or type(error).__name__
        if path.is_file() and path.stat().st_size == 0:
            reason = "the file is empty (0 bytes)"
        raise DataError(f"{path}: cannot read {what} ({reason})", kind="unreadable") from error
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Decode to HxWx3 uint8 RGB, by the policy in the module docstring."""
    path = Path(path)
    with _open_decoded(path, "image") as image:
        mode = image.mode
        if mode in SIXTEEN_BIT_MODES:
            array = np.asarray(image).astype(np.float64)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise DataError(
                    f"{path}: 32-bit image with values {array.min():.0f}..{array.max():.0f}, beyond 16 bits; "
                    "convert it to 8 or 16 bit",
                    kind="unsupported",
                )
            array = np.clip(array * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(array[..., None], 3, axis=2)
        if mode == "F":
            raise DataError(
                f"{path}: floating-point image (mode F); save it as 8 or 16-bit integers", kind="unsupported"
            )
        if mode != "RGB":
            image = (
                image.convert("RGBA").convert("RGB")
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
                else image.convert("RGB")
            )
        return np.asarray(image, dtype=np.uint8).copy()


def read_mask_values(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to its raw HxW values, by the policy in the module docstring (palette PNGs give their indices).

    ``expected_size`` is the image's (height, width).
    """
    path = Path(path)
    with _open_decoded(path, "mask") as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
            if alpha.size and alpha.min() < 255:
                raise DataError(
                    f"{path}: mask has transparent pixels (mode {image.mode}); save masks without an alpha channel",
                    kind="mask_values",
                )
        if image.mode == "F":
            raise DataError(
                f"{path}: floating-point mask (mode F); masks must be integer 0/255 or 0/1", kind="unsupported"
            )
        if image.mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise DataError(
                    f"{path}: colour mask (mode {image.mode}); masks must be single-channel (0/255, 0/1 or "
                    "class indices), or read with mask_values=colors and dataset.classes",
                    kind="mask_values",
                )
            array = rgb[..., 0]
        else:
            array = np.asarray(image)  # palette ("P") indices are read as class indices
    if array.ndim != 2:
        raise DataError(f"{path}: mask has shape {array.shape}, expected a single channel", kind="mask_values")
    if expected_size is not None and tuple(array.shape) != tuple(expected_size):
        raise DataError(
            f"{path}: mask is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{expected_size[1]}x{expected_size[0]} (width x height)",
            kind="mask_size",
        )
    return array


def binary_mask(array: np.ndarray, source: str | Path) -> np.ndarray:
    """0/1, 0/255 or 0/65535 values (soft edges thresholded at half range) to {0, 1}; anything else is refused.

    Refused with the reason: class indices (0..k), VOC's class indices with the void border 255 ({0, 1, 255}),
    a gradient or probability map (mid-range values away from any edge), 12-bit data in a 16-bit file.
    """
    if array.dtype == bool:
        return array.astype(np.uint8)
    peak = int(array.max()) if array.size else 0
    if peak <= 1:
        return array.astype(np.uint8)
    if peak == 255 or (array.dtype != np.uint8 and peak == 65535):
        check_soft_edges(array, peak, source)
        return (array >= (peak + 1) // 2).astype(np.uint8)
    values = np.unique(array)
    shown = f"{values[:8].tolist()}{'...' if values.size > 8 else ''}"
    if array.dtype != np.uint8 and peak <= 4095:
        raise DataError(
            f"{source}: 16-bit mask with values {shown} up to {peak}: 12-bit data (a scan or a probability map?), "
            "not a binary mask; save masks as 8-bit 0/255",
            kind="mask_values",
        )
    raise DataError(
        f"{source}: mask values {shown} are neither 0/1 nor 0/255 "
        "(a class-index mask? read it with a layout that has mask_values=classes, see docs/data.md; "
        "or declare dataset.classes, see docs/defect_types.md)",
        kind="mask_values",
    )


#: mid-range values a soft (anti-aliased, JPEG) edge may hold; beyond ``EDGE_REACH`` px from an edge they are a gradient
MID_RANGE = (32 / 255, 223 / 255)
EDGE_REACH = 2
#: a mask is refused as a gradient when more mid-range pixels than this share of its defect pixels lie away from edges
GRADIENT_SHARE = 0.05


def check_soft_edges(array: np.ndarray, peak: int, source: str | Path) -> float:
    """Refuse what thresholding at half range would misread; return the share of defect pixels on soft edges.

    VOC's class indices with the void border ({0, 1, 2, 255}: a few small values, none in the upper range)
    and gradients (mid-range values far from any 0/255 boundary) are not binary masks.
    """
    between = (array > 0) & (array < peak)
    if not between.any():
        return 0.0
    from scipy import ndimage

    high = array >= (peak + 1) // 2
    window = 2 * EDGE_REACH + 1
    near_edge = ndimage.maximum_filter(high, size=window) & ~ndimage.minimum_filter(high, size=window)
    inner = between & ~near_edge
    values = np.unique(array[between])
    small = int(peak * 32 / 255)
    if values.max() < small and values.size <= 20:  # soft edges span the range; JPEG rings near 0 and near the peak
        raise DataError(
            f"{source}: mask values {np.unique(array)[:8].tolist()} look like class indices with a void border {peak} "
            "(Pascal VOC), not a binary mask: read them with mask_values=classes void_value=255 (dataset=voc_seg), "
            "where the void border is ignored",
            kind="mask_values",
        )
    low, high_bound = (int(peak * bound) for bound in MID_RANGE)
    gradient = inner & (array > low) & (array < high_bound)
    defect = max(1, int(high.sum()))
    if gradient.sum() > max(16, GRADIENT_SHARE * defect):
        raise DataError(
            f"{source}: {int(gradient.sum())} pixels hold mid-range values away from any edge "
            f"({100 * gradient.sum() / array.size:.1f}% of the mask): a gradient or probability map, not a binary mask "
            "with soft edges; threshold it yourself (0/255) so the defect area is your decision, not a guess",
            kind="mask_values",
        )
    return float(between.sum()) / float(max(1, int((array > 0).sum())))


def read_mask_colors(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a colour mask (RGB, or a palette PNG by its colours) to HxWx3 uint8; transparency is refused."""
    path = Path(path)
    with _open_decoded(path, "mask") as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
            if alpha.size and alpha.min() < 255:
                raise DataError(f"{path}: colour mask has transparent pixels (mode {image.mode})", kind="mask_values")
        if image.mode in ("F", *SIXTEEN_BIT_MODES):
            raise DataError(f"{path}: colour mask of mode {image.mode}; save it as 8-bit RGB", kind="unsupported")
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if expected_size is not None and tuple(rgb.shape[:2]) != tuple(expected_size):
        raise DataError(
            f"{path}: mask is {rgb.shape[1]}x{rgb.shape[0]} but its image is "
            f"{expected_size[1]}x{expected_size[0]} (width x height)",
            kind="mask_size",
        )
    return rgb


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a binary mask to HxW uint8 in {0, 1}, by the policy in the module docstring."""
    return binary_mask(read_mask_values(path, expected_size), path)
