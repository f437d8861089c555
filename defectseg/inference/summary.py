"""predictions.json and predictions.csv: rewritten atomically after every photo, so a kill loses nothing done.

A run stopped by SIGKILL, SIGTERM or Ctrl-C leaves a valid summary of the photos finished so far with
``"complete": false``. Run the same command into the same output folder again and the photos already done (same
model, same settings, their files still there) are taken over instead of predicted again; another model or other
settings are refused, so one summary never mixes two.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectseg.inference.classes import flat_columns
from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_json, atomic_writer

CSV_COLUMNS = [
    "image",
    "status",
    "width",
    "height",
    "defects",
    "thin_defects",
    "defect_area_px",
    "defect_area_percent",
    "largest_defect_px",
    "total_length_px",
    "max_width_px",
    "defect_area_mm2",
    "largest_defect_mm2",
    "total_length_mm",
    "max_width_mm",
    "mm_per_px",
    "mm_per_px_from",
    "scale_x",
    "scale_y",
    "min_defect_area_px",
    "threshold",
    "seconds",
    "mask",
    "overlay",
    "probability",
    "error",
]
#: what ``defectseg.utils.io.atomic_writer`` leaves behind when a process is killed inside a write
STALE_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
OUTPUT_FOLDERS = ("masks", "class_masks", "overlays", "probabilities", "previews")
#: a photo's record names its files under these keys (paths relative to the output folder; the CLASS_ ones as
#: {class: path})
FILE_KEYS = ("mask", "overlay", "probability", "preview_photo", "preview_overlay")
CLASS_FILE_KEYS = ("class_masks", "class_probabilities")
#: defects.csv (models with classes): one row per defect
DEFECT_COLUMNS = [
    "image",
    "name",
    "id",
    "class",
    "area_px",
    "area_percent",
    "length_px",
    "mean_width_px",
    "max_width_px",
    "area_mm2",
    "length_mm",
    "mean_width_mm",
    "max_width_mm",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
    "centroid_x",
    "centroid_y",
]


def record_files(record: dict[str, Any]) -> list[str]:
    """Every file a photo's record names (relative to the output folder)."""
    files = [record[kind] for kind in FILE_KEYS if record.get(kind)]
    return files + [path for kind in CLASS_FILE_KEYS for path in (record.get(kind) or {}).values()]


def defect_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """defects.csv's rows of one photo: every defect with its class, measurements and box."""
    rows = []
    for defect in record.get("components") or []:
        x, y, w, h = defect["bbox"]
        rows.append(
            {
                "image": record["image"],
                "name": record.get("name"),
                "class": defect.get("type"),
                **defect,
                "bbox_x": x,
                "bbox_y": y,
                "bbox_width": w,
                "bbox_height": h,
                "centroid_x": defect["centroid"][0],
                "centroid_y": defect["centroid"][1],
            }
        )
    return rows


def _plain(value: Any) -> Any:
    """As it reads back from JSON, so a stored fingerprint compares equal to a fresh one."""
    return json.loads(json.dumps(value, default=str))


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the half-written temporary files a killed run left in its output folder (never anything else)."""
    removed = []
    candidates = list(output_dir.glob(".*.tmp"))
    for folder in OUTPUT_FOLDERS:
        if (output_dir / folder).is_dir():
            candidates += (output_dir / folder).rglob(".*.tmp")
    for path in candidates:
        if path.is_file() and STALE_TEMPORARY.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


class PredictionSummary:
    """The photos done so far (records in input order), the failures, and whether the run got through them all."""

    def __init__(
        self,
        output_dir: Path,
        model: dict[str, Any],
        settings: dict[str, Any],
        images: Sequence[str],
        class_columns: Sequence[str] | None = None,
    ):
        """``class_columns``: a model with classes: predictions.csv's per-class columns, and defects.csv is written."""
        self.output_dir = Path(output_dir)
        self.json_path = self.output_dir / "predictions.json"
        self.csv_path = self.output_dir / "predictions.csv"
        self.defects_csv_path = None if class_columns is None else self.output_dir / "defects.csv"
        self.columns = list(CSV_COLUMNS)
        if class_columns is not None:  # after the totals, before the scale and file columns
            at = self.columns.index("mm_per_px")
            self.columns[at:at] = list(class_columns)
        self.model, self.settings = _plain(model), _plain(settings)
        self.order = {image: index for index, image in enumerate(images)}
        self.records: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, str]] = {}
        self.complete = False

    def take_over_previous(self) -> int:
        """Keep the photos a previous run of the same model and settings finished here; returns how many."""
        if not self.json_path.is_file():
            return 0
        try:
            previous = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(
                f"{self.json_path}: cannot be read ({error}); set another output_dir= or move that file away"
            ) from error
        differing = [
            f"{part}.{key}"
            for part, mine in (("model", self.model), ("settings", self.settings))
            for key in sorted(set(mine) | set(previous.get(part) or {}))
            if mine.get(key) != (previous.get(part) or {}).get(key)
        ]
        if differing:
            raise UserError(
                f"{self.output_dir} already holds predictions made differently ({', '.join(differing)} differ); "
                "set another output_dir= (or rerun with the same model and settings to continue that run)"
            )
        for record in previous.get("images") or []:
            files = record_files(record)
            if record.get("image") in self.order and all((self.output_dir / f).is_file() for f in files):
                self.records[record["image"]] = record
        return len(self.records)

    def is_done(self, image: str) -> bool:
        return image in self.records

    def add(self, record: dict[str, Any]) -> None:
        self.failed.pop(record["image"], None)
        self.records[record["image"]] = record
        self.write()

    def fail(self, image: str, error: str) -> None:
        self.failed[image] = {"image": image, "error": error}
        self.write()

    def finish(self) -> None:
        self.complete = True
        self.write()

    def ordered_records(self) -> list[dict[str, Any]]:
        return sorted(self.records.values(), key=lambda r: self.order.get(r["image"], len(self.order)))

    def ordered_failures(self) -> list[dict[str, str]]:
        return sorted(self.failed.values(), key=lambda f: self.order.get(f["image"], len(self.order)))

    def write(self) -> None:
        """Both files, each atomically: a kill at any moment leaves the previous complete version or this one.

        The CSV goes first: predictions.json, which a rerun continues from, is never ahead of it.
        """
        records, failed = self.ordered_records(), self.ordered_failures()
        with atomic_writer(self.csv_path) as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**r, **flat_columns(r.get("classes") or {})} for r in records)
            writer.writerows({"image": f["image"], "status": "failed", "error": f["error"]} for f in failed)
        if self.defects_csv_path is not None:
            with atomic_writer(self.defects_csv_path) as handle:
                writer = csv.DictWriter(handle, fieldnames=DEFECT_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(row for r in records for row in defect_rows(r))
        atomic_write_json(
            self.json_path,
            {
                "complete": self.complete,
                "photos": len(self.order),
                "done": len(records),
                "model": self.model,
                "settings": self.settings,
                "images": records,
                "failed": failed,
            },
        )
