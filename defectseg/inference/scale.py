"""At what scale the model sees each photo, the smallest defect kept, and each photo's millimetres per pixel.

Training resizes every photo, whatever its size, to ``dataset.image_size`` square (conf/dataset/*.yaml): a defect is
learnt at the size it has after that resize. Stage 2 records how its training photos were resized (``input_scale``
in the run's metrics.json: their median width and height, and the size they were resized to), and predict shows a
new photo to the model the same way:

- ``scale=auto`` (default): photos taken like the training photos (same camera, same distance) get the training's
  resize factor, per axis, whatever their size: a 4000x3000 photo of a surface the training saw in 400x300 crops
  is cut into tiles at the pixel size the model learnt.
- ``scale=fit``: each photo is shrunk whole to the trained size, as training did with its own photos: for photos
  that frame the surface as the training photos did, but at another resolution.
- a number: that factor on both axes (``scale=0.25``).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from defectseg.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)

#: ``min_defect_area_px=auto``: defects smaller than this many pixels at the model's own scale (a 4x4 patch) are
#: speckle; in a photo shown to the model at half size, that is 64 photo pixels
MIN_MODEL_AREA_PX = 16


def training_input_scale(train_files: Sequence[str | Path], image_size: int) -> dict[str, Any] | None:
    """How training resized its photos: their median size and the square side they became (image headers only)."""
    widths, heights = [], []
    for file in train_files:
        try:
            with Image.open(file) as image:
                width, height = image.size
        except OSError:  # unreadable here (moved data, RLE layouts...): the other photos still tell
            continue
        widths.append(width)
        heights.append(height)
    if not widths:
        return None
    width, height = statistics.median(widths), statistics.median(heights)
    return {
        "image_size": int(image_size),
        "photo_width": float(width),
        "photo_height": float(height),
        "photos": len(widths),
        "x": round(image_size / width, 6),
        "y": round(image_size / height, 6),
    }


def parse_scale(setting: Any) -> str | float:
    """``auto``, ``fit`` or a positive factor; anything else is one clear line."""
    text = str(setting).strip().lower()
    if text in ("auto", "fit"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"scale must be auto, fit or a positive factor (e.g. scale=0.25), got {setting}")
    return value


def photo_scale(
    setting: str | float, input_scale: dict[str, Any] | None, width: int, height: int
) -> tuple[float, float, str]:
    """(x factor, y factor, why) for one ``width`` x ``height`` photo."""
    if isinstance(setting, float):
        return setting, setting, "scale= (given)"
    if not input_scale:
        return 1.0, 1.0, "scale=1: the model does not record how its training photos were resized"
    size = int(input_scale["image_size"])
    if setting == "fit":
        return size / width, size / height, f"fit: the whole photo to the trained {size}x{size}"
    return (
        float(input_scale["x"]),
        float(input_scale["y"]),
        f"auto: as training resized its {input_scale['photo_width']:g}x{input_scale['photo_height']:g} photos "
        f"to {size}x{size}",
    )


def min_area_px(setting: Any, scale_x: float, scale_y: float) -> int:
    """The smallest defect kept, in photo pixels: ``auto`` is MIN_MODEL_AREA_PX at the scale the model sees."""
    if str(setting).strip().lower() == "auto":
        return max(1, math.ceil(MIN_MODEL_AREA_PX / (scale_x * scale_y)))
    try:
        value = int(setting)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise ConfigError(f"min_defect_area_px must be auto or a whole number of pixels >= 0, got {setting}")
    return value


class MillimetresPerPixel:
    """Each photo's scale: from ``mm_per_px_file`` (a CSV with columns image, mm_per_px), else the one ``mm_per_px``.

    A CSV row names its photo by path relative to the input folder (``site_7/pier.jpg``), by the path as given, or
    by file name alone when that is unique in the CSV.
    """

    def __init__(self, default: Any, table: str | Path | None) -> None:
        self.default = None if default is None else float(default)
        if self.default is not None and not self.default > 0:
            raise ConfigError(f"mm_per_px must be positive (millimetres per pixel), got {default}")
        self.by_path: dict[str, float] = {}
        self.by_name: dict[str, float | None] = {}
        self.file = Path(str(table)).expanduser() if table else None
        if self.file is not None:
            self._read(self.file)

    def _read(self, path: Path) -> None:
        try:
            handle = path.open(newline="", encoding="utf-8-sig")
        except OSError as error:
            raise UserError(f"mm_per_px_file={path}: cannot be read ({error.strerror})") from error
        with handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"image", "mm_per_px"} <= {f.strip() for f in reader.fieldnames}:
                raise UserError(f"mm_per_px_file={path}: needs the columns image,mm_per_px (a header line)")
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                try:
                    value = float(row["mm_per_px"])
                except ValueError:
                    value = math.nan
                if not value > 0 or math.isinf(value) or not row["image"]:
                    raise UserError(
                        f"mm_per_px_file={path}, line {line}: needs a photo and a positive mm_per_px, "
                        f"got {row['image']!r}, {row['mm_per_px']!r}"
                    )
                key = Path(row["image"]).as_posix()
                self.by_path[key] = value
                name = Path(key).name
                self.by_name[name] = value if name not in self.by_name else None  # None: ambiguous by name

    def lookup(self, path: Path, relative: str) -> tuple[float | None, str]:
        """(mm per pixel, where it came from) for one photo."""
        for key in (relative, Path(path).as_posix(), str(path)):
            if key in self.by_path:
                return self.by_path[key], f"{self.file}"
        if self.by_name.get(Path(path).name) is not None:
            return self.by_name[Path(path).name], f"{self.file}"
        if self.default is not None:
            return self.default, "mm_per_px="
        return None, "none"
