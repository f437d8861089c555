"""The layouts public segmentation sets ship in: where each image's mask is, where each image's class
comes from, and which split the set ships with (how mask values become labels: ``classes.py``).

A layout's ``scan(root)`` gives ``(image path, mask)`` samples, where a mask is anything with
``load((height, width)) -> HxW uint8`` ({0, 1} for a binary run, or a label map with ``dataset.classes``;
a mask file, or run-length rows of a CSV),
and the set's own split when it has one. The segmentation DataModule needs nothing else, so
a new layout is one class here and one config in ``conf/dataset/``.

- ``FolderLayout``: ``images/x.jpg`` + ``masks/x.png`` (the default);
- ``PatternLayout``: the mask beside the image, named by a pattern (``{stem}.png``, ``{stem}_mask.png``);
- ``VocLayout``: Pascal VOC (``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/*.txt``);
- ``SeverstalLayout``: one CSV of run-length-encoded masks (``ImageId,ClassId,EncodedPixels``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from defectseg.data import readers
from defectseg.data.classes import MASK_VALUE_MODES, VOID_AS, ClassSpec, ImageClasses, Mask, MaskFile, MaskValues
from defectseg.data.readers import IMAGE_EXTENSIONS, SPLITS, DataError
from defectseg.data.validation import Problem
from defectseg.utils.errors import ConfigError

log = logging.getLogger(__name__)

# how mask values become labels lives in defectseg.data.classes; read through here by the layouts' users too
__all__ = ["MASK_VALUE_MODES", "VOID_AS", "MaskFile", "MaskValues"]
VOC_SPLIT_FILES = MappingProxyType({"train": "train", "val": "val", "test": "test"})


Sample = tuple[Path, Mask]


@dataclass
class LayoutScan:
    """What a layout found: the samples, and the split the set ships with (indices into samples), if any."""

    samples: list[Sample]
    splits: dict[str, list[int]] | None = None
    problems: list[Problem] = field(
        default_factory=list
    )  # what dataset.on_error decides about (images without masks...)


class Layout:
    """Mask-value options every layout shares (see MaskValues), and where an image's class comes from
    (``class_from``: folder | prefix | csv, for binary masks with ``dataset.classes``; see ImageClasses)."""

    default_mask_values = "binary"

    def __init__(
        self,
        mask_values: str | None = None,
        keep_classes: Iterable[int] | None = None,
        void_value: int | None = None,
        void_as: str = "ignore",
        class_values: Iterable[int] | None = None,
        colors: Mapping[str, Any] | None = None,
        background_color: Any = (0, 0, 0),
        void_color: Any = None,
        class_from: str | None = None,
        class_separator: str = "__",
        class_csv: str | None = None,
        class_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.values = MaskValues.from_options(
            mask_values or self.default_mask_values,
            keep_classes,
            void_value,
            void_as,
            class_values,
            colors,
            background_color,
            void_color,
        )
        self.image_classes = (
            None if class_from is None else ImageClasses(class_from, class_separator, class_csv, class_aliases)
        )

    def bind(self, spec: ClassSpec | None) -> None:
        """Read masks for a run with these classes (None: binary); a layout that cannot label them says why."""
        self.values = self.values.bind(spec)
        if spec is None and self.image_classes is not None:
            raise ConfigError("dataset.layout.class_from labels images by class: it needs dataset.classes")
        if spec is not None and self.values.mode == "binary" and self.image_classes is None:
            raise ConfigError(
                f"dataset.classes={list(spec.names)} with binary masks: say where each image's class is "
                "(dataset.layout.class_from=folder|prefix|csv), or read class-index masks (mask_values=classes) "
                "or colour masks (mask_values=colors); see docs/defect_types.md"
            )

    def mask(self, path: Path, image: Path, image_root: Path, data_root: Path) -> MaskFile:
        """The mask file of ``image``, with the image's class when the layout labels images."""
        image_class = (None, "")
        if self.image_classes is not None:
            image_class = self.image_classes.of(image, image_root, data_root)
        return MaskFile(path, self.values, image_class)

    def scan(self, root: Path) -> LayoutScan:
        raise NotImplementedError


def _scan_split_folders(root: Path, scan_one: Callable[[Path], list[Sample]]) -> LayoutScan:
    """``root/train|val|test/`` when the set ships its split (each laid out like a whole set), else ``root``."""
    folders = readers.find_split_folders(root)
    if not folders:
        return LayoutScan(scan_one(root))
    samples: list[Sample] = []
    splits: dict[str, list[int]] = {}
    for split, folder in folders.items():
        found = scan_one(folder)
        splits[split] = list(range(len(samples), len(samples) + len(found)))
        samples += found
    return LayoutScan(samples, splits)


# --- images/ + masks/ --------------------------------------------------------------------------


class FolderLayout(Layout):
    """``images/x.jpg`` + ``masks/x{mask_suffix}.png`` (same stem), optionally in ``train/ val/ test/``."""

    def __init__(
        self, image_dir: str = "images", mask_dir: str = "masks", mask_suffix: str = "", **mask_options
    ) -> None:
        super().__init__(**mask_options)
        self.image_dir, self.mask_dir, self.mask_suffix = image_dir, mask_dir, mask_suffix

    def scan(self, root: Path) -> LayoutScan:
        problems: list[Problem] = []

        def scan_one(folder: Path) -> list[Sample]:
            pairs, missing, orphans = readers.pair_segmentation_folder(
                folder, self.image_dir, self.mask_dir, self.mask_suffix
            )
            split = folder.name if folder.name in SPLITS else None
            problems.extend(
                Problem("missing_mask", str(image), f"{image}: has no mask in {folder / self.mask_dir}", split)
                for image in missing
            )
            problems.extend(
                Problem("mask_without_image", str(mask), f"{mask}: has no image in {folder / self.image_dir}", split)
                for mask in orphans
            )
            return [(image, self.mask(mask, image, folder / self.image_dir, folder)) for image, mask in pairs]

        scan = _scan_split_folders(Path(root), scan_one)
        scan.problems = problems
        return scan


# --- mask beside the image ----------------------------------------------------------------------


class PatternLayout(Layout):
    """The mask's path from the image's, relative to the image's folder: ``{stem}.png``
    (Magnetic-tile: ``MT_*/Imgs/x.jpg`` + ``x.png``), ``{stem}_mask.png``, ``../masks/{stem}.png``.

    Fields: ``{stem}`` (name without extension), ``{name}``, ``{ext}`` (with the dot).
    Files that are some image's mask are never taken for images, so images and masks can share
    a folder and an extension. ``recursive`` searches every subfolder of ``image_dir``.
    """

    def __init__(
        self,
        mask_pattern: str = "{stem}.png",
        image_dir: str = ".",
        recursive: bool = False,
        image_extensions: Sequence[str] | None = None,
        **mask_options,
    ) -> None:
        super().__init__(**mask_options)
        try:
            mask_pattern.format(stem="x", name="x.jpg", ext=".jpg")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"dataset.layout.mask_pattern={mask_pattern!r}: only {{stem}}, {{name}} and {{ext}} "
                f"can be filled in ({error})"
            ) from None
        if "{" not in mask_pattern:
            raise ConfigError(
                f"dataset.layout.mask_pattern={mask_pattern!r} names no {{stem}} or {{name}}: "
                "every image would share one mask"
            )
        self.mask_pattern = mask_pattern
        self.image_dir = image_dir
        self.recursive = bool(recursive)
        self.image_extensions = tuple(e.lower() for e in (image_extensions or IMAGE_EXTENSIONS))

    def mask_path(self, image: Path) -> Path:
        return image.parent / self.mask_pattern.format(stem=image.stem, name=image.name, ext=image.suffix)

    def scan(self, root: Path) -> LayoutScan:
        return _scan_split_folders(Path(root), self._scan_one)

    def _scan_one(self, root: Path) -> list[Sample]:
        folder = Path(root) / self.image_dir
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder does not exist")
        files = self._files(folder)
        mask_of = {path: self.mask_path(path) for path in files}
        masks = {mask.resolve() for mask in mask_of.values()}
        images = [path for path in files if path.resolve() not in masks]
        if not images:
            raise DataError(
                f"{folder}: holds no images ({', '.join(self.image_extensions)}) besides masks named "
                f"{self.mask_pattern!r}{'' if self.recursive else ' (recursive=false)'}"
            )
        missing = [image for image in images if not mask_of[image].is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) without a mask named {self.mask_pattern!r} beside them: "
                + readers.shorten([f"{m} (no {mask_of[m].name})" for m in missing])
            )
        return [(image, self.mask(mask_of[image], image, folder, Path(root))) for image in images]

    def _files(self, folder: Path) -> list[Path]:
        candidates = folder.rglob("*") if self.recursive else folder.iterdir()
        return sorted(
            p
            for p in candidates
            if p.is_file()
            and p.suffix.lower() in self.image_extensions
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )


# --- Pascal VOC ----------------------------------------------------------------------------------


class VocLayout(Layout):
    """Pascal VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (class indices, often a
    palette PNG; 255 = 'void' border), ``ImageSets/Segmentation/{train,val,test}.txt`` as the split.

    ``split_files`` maps our splits to list names (e.g. ``{train: train, val: val, test: val}``
    when a set ships no test list); ``null`` ignores the lists and splits by
    ``dataset.split_fractions``, as it does when ``ImageSets/Segmentation`` is absent. Without a
    test list there is no test split (a warning says so).
    """

    default_mask_values = "classes"

    def __init__(
        self,
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        image_sets: str = "ImageSets/Segmentation",
        split_files: Mapping[str, str] | None = VOC_SPLIT_FILES,
        mask_values: str = "classes",
        void_value: int | None = 255,
        **mask_options,
    ) -> None:
        super().__init__(mask_values=mask_values, void_value=void_value, **mask_options)
        self.image_dir, self.mask_dir, self.image_sets = image_dir, mask_dir, image_sets
        self.split_files = None if split_files is None else {str(k): str(v) for k, v in dict(split_files).items()}
        unknown = sorted(set(self.split_files or ()) - set(SPLITS))
        if unknown:
            raise ConfigError(f"dataset.layout.split_files: {unknown} are not splits ({list(SPLITS)})")
        if self.split_files is not None and not {"train", "val"} <= set(self.split_files):
            raise ConfigError(f"dataset.layout.split_files={self.split_files} must name at least train and val lists")

    def scan(self, root: Path) -> LayoutScan:
        root = Path(root)
        image_dir, mask_dir = root / self.image_dir, root / self.mask_dir
        for folder, what in ((image_dir, "image"), (mask_dir, "mask")):
            if not folder.is_dir():
                raise DataError(f"{folder}: VOC {what} folder does not exist")
        lists_dir = root / self.image_sets
        if self.split_files is None or not lists_dir.is_dir():
            if self.split_files is not None:
                log.warning("%s: no split lists, splitting by dataset.split_fractions", lists_dir)
            ids = [mask.stem for mask in readers.list_images(mask_dir)]
            if not ids:
                raise DataError(f"{mask_dir}: holds no masks")
            return LayoutScan([self._sample(root, image_id, f"mask {mask_dir / image_id}") for image_id in ids])
        samples: list[Sample] = []
        splits: dict[str, list[int]] = {}
        seen: dict[str, str] = {}
        for split, list_name in self.split_files.items():
            list_file = lists_dir / f"{list_name}.txt"
            if not list_file.is_file():
                if split == "test":
                    log.warning(
                        "%s: no test list, so no test split (set dataset.layout.split_files.test to another list)",
                        list_file,
                    )
                    continue
                raise DataError(
                    f"{list_file}: VOC split list does not exist (dataset.layout.split_files.{split}={list_name})"
                )
            start = len(samples)
            for line_number, image_id in self._read_ids(list_file):
                where = f"{list_file}, line {line_number}"
                if image_id in seen and seen[image_id] != list_name:
                    raise DataError(
                        f"{where}: {image_id!r} is also in {seen[image_id]}.txt; an image cannot be in two splits"
                    )
                seen[image_id] = list_name
                samples.append(self._sample(root, image_id, where))
            if len(samples) == start:
                raise DataError(f"{list_file}: lists no image")
            splits[split] = list(range(start, len(samples)))
        return LayoutScan(samples, splits)

    @staticmethod
    def _read_ids(list_file: Path) -> list[tuple[int, str]]:
        """One id per line (VOC's Main lists add a column: only the first counts)."""
        lines = list_file.read_text(encoding="utf-8").splitlines()
        return [(n, line.split()[0]) for n, line in enumerate(lines, start=1) if line.strip()]

    def _sample(self, root: Path, image_id: str, where: str) -> Sample:
        image = _find_by_stem(root / self.image_dir, image_id)
        if image is None:
            raise DataError(
                f"{where}: no image {image_id!r} in {root / self.image_dir} ({', '.join(IMAGE_EXTENSIONS)})"
            )
        mask = root / self.mask_dir / f"{image_id}.png"
        if not mask.is_file():
            raise DataError(f"{where}: no mask {mask}")
        return image, self.mask(mask, image, root / self.image_dir, root)


def _find_by_stem(folder: Path, stem: str) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{extension}", folder / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


# --- Severstal: run-length-encoded masks in a CSV ---------------------------------------------------


def parse_rle(text: str, where: str) -> np.ndarray:
    """``"start length start length ..."`` (1-based starts) to an (n, 2) array; syntax checked here, range at decode."""
    tokens = text.split()
    if len(tokens) % 2:
        raise DataError(
            f"{where}: EncodedPixels has {len(tokens)} numbers; run-length pairs (start length) need an even count"
        )
    try:
        runs = np.array([int(t) for t in tokens], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DataError(f"{where}: EncodedPixels holds {bad!r}, not an integer") from None
    if runs.size and runs[:, 0].min() < 1:
        raise DataError(f"{where}: run start {int(runs[:, 0].min())} < 1 (starts are 1-based)")
    if runs.size and runs[:, 1].min() < 1:
        raise DataError(f"{where}: run length {int(runs[:, 1].min())} < 1")
    return runs


def decode_rle(runs: np.ndarray | str, size: tuple[int, int], where: str = "EncodedPixels") -> np.ndarray:
    """Column-major (top to bottom, then left to right), 1-based runs to an HxW {0, 1} mask."""
    if isinstance(runs, str):
        runs = parse_rle(runs, where)
    height, width = size
    total = height * width
    flat = np.zeros(total, dtype=np.uint8)
    for start, length in runs:
        if start + length - 1 > total:
            raise DataError(
                f"{where}: run {start} {length} ends at pixel {start + length - 1}, "
                f"past the {width}x{height} image's {total} pixels (width x height)"
            )
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape((width, height)).T.copy()


def encode_rle(mask: np.ndarray) -> str:
    """HxW mask (non-zero = defect) to column-major, 1-based ``start length`` pairs (Kaggle/Severstal)."""
    pixels = np.concatenate([[0], (np.asarray(mask).T.reshape(-1) != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    edges[1::2] -= edges[::2]
    return " ".join(str(int(v)) for v in edges)


@dataclass(frozen=True)
class RleMask:
    """The CSV rows of one image (one per class): merged into one defect mask for a binary run, or each row's
    ClassId as its class (``class_values``: the ClassId of each declared class, default 1..C); no rows: empty."""

    source: Path
    rows: tuple[tuple[int, int, np.ndarray], ...] = ()  # (CSV line number, ClassId, runs)
    spec: ClassSpec | None = None
    class_values: tuple[int, ...] | None = None

    def load(self, image_size: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(image_size, dtype=np.uint8)
        if self.spec is None:
            for line_number, _, runs in self.rows:
                mask |= decode_rle(runs, image_size, where=f"{self.source}, line {line_number}")
            return mask
        ids = list(self.class_values or range(1, self.spec.num_classes + 1))
        for line_number, class_id, runs in self.rows:
            where = f"{self.source}, line {line_number}"
            if class_id not in ids:
                raise DataError(
                    f"{where}: ClassId {class_id} matches no declared class (dataset.classes={list(self.spec.names)} "
                    f"are the ClassIds {ids}); declare it or leave it out with dataset.layout.class_values",
                    kind="mask_values",
                )
            label = ids.index(class_id) + 1
            hit = decode_rle(runs, image_size, where=where).astype(bool)
            if self.spec.multilabel:
                mask[hit] |= np.uint8(1 << (label - 1))
                continue
            overlap = hit & (mask > 0) & (mask != label)
            if overlap.any():
                raise DataError(
                    f"{where}: ClassId {class_id} overlaps another class on {int(overlap.sum())} pixels; "
                    "exclusive classes cannot share a pixel (dataset.multilabel=true lets them)",
                    kind="mask_values",
                )
            mask[hit] = label
        return mask

    def __str__(self) -> str:
        return f"{self.source} ({len(self.rows)} row(s))"


class SeverstalLayout(Layout):
    """Severstal steel defects: ``train_images/<ImageId>`` + ``train.csv`` with
    ``ImageId,ClassId,EncodedPixels`` (several rows per image for several classes),
    or the older wide format ``ImageId_ClassId,EncodedPixels`` (``x.jpg_3``, empty = none).

    Every image of ``image_dir`` is used; one without rows has an empty mask (a defect-free
    photo). Binary runs merge the rows (``keep_classes``: only those ClassIds'); with
    ``dataset.classes`` each row's ClassId is its class (``class_values``: the ClassId of each
    declared class, default 1..C; a row of another ClassId is an error naming its line).
    """

    def __init__(
        self,
        csv_file: str = "train.csv",
        image_dir: str = "train_images",
        keep_classes: Iterable[int] | None = None,
        class_values: Iterable[int] | None = None,
    ) -> None:
        super().__init__()
        self.csv_file, self.image_dir = csv_file, image_dir
        self.keep_classes = None if keep_classes is None else {int(c) for c in keep_classes}
        self.class_values = None if class_values is None else tuple(int(v) for v in class_values)
        self.spec: ClassSpec | None = None

    def bind(self, spec: ClassSpec | None) -> None:
        if spec is None and self.class_values is not None:
            raise ConfigError("dataset.layout.class_values needs dataset.classes (the classes the ClassIds stand for)")
        if spec is not None and self.keep_classes is not None:
            raise ConfigError(
                "dataset.layout.keep_classes merges ClassIds into one defect (binary runs); with dataset.classes, "
                "list each class's ClassId in dataset.layout.class_values instead"
            )
        if spec is not None and self.class_values is not None and len(self.class_values) != spec.num_classes:
            raise ConfigError(
                f"dataset.layout.class_values={list(self.class_values)} gives {len(self.class_values)} ClassIds "
                f"for {spec.num_classes} classes {list(spec.names)}"
            )
        self.spec = spec
        self.values = replace(self.values, spec=spec)

    def scan(self, root: Path) -> LayoutScan:
        root = Path(root)
        csv_path, image_dir = root / self.csv_file, root / self.image_dir
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: run-length CSV does not exist (dataset.layout.csv_file)")
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder does not exist (dataset.layout.image_dir)")
        images = readers.list_images(image_dir)
        if not images:
            raise DataError(f"{image_dir}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        by_name = {image.name: image for image in images}
        rows: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        problems: list[str] = []
        for line_number, image_id, class_id, encoded in self._rows(csv_path):
            where = f"{csv_path}, line {line_number}"
            try:
                if image_id not in by_name:
                    raise DataError(f"{where}: image {image_id!r} is not in {image_dir}")
                runs = parse_rle(encoded, where)
            except DataError as error:
                problems.append(str(error))
                continue
            if runs.size and (self.keep_classes is None or class_id in self.keep_classes):
                rows.setdefault(image_id, []).append((line_number, class_id, runs))
        if problems:
            raise DataError.listing(problems, csv_path)
        return LayoutScan(
            [
                (image, RleMask(csv_path, tuple(rows.get(image.name, ())), self.spec, self.class_values))
                for image in images
            ]
        )

    @staticmethod
    def _rows(csv_path: Path) -> Iterable[tuple[int, str, int, str]]:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if header[:3] == ["ImageId", "ClassId", "EncodedPixels"]:
                wide = False
            elif header[:2] == ["ImageId_ClassId", "EncodedPixels"]:
                wide = True
            else:
                raise DataError(
                    f"{csv_path}: header {header} is neither ImageId,ClassId,EncodedPixels "
                    "nor ImageId_ClassId,EncodedPixels"
                )
            for line_number, row in enumerate(reader, start=2):
                if not row or not any(cell.strip() for cell in row):
                    continue
                where = f"{csv_path}, line {line_number}"
                if len(row) < (2 if wide else 3):
                    raise DataError(f"{where}: {len(row)} column(s), expected {header}")
                image_id, class_text = (
                    row[0].rsplit("_", 1) if wide and "_" in row[0] else (row[0], "" if wide else row[1])
                )
                encoded = row[1] if wide else row[2]
                try:
                    class_id = int(class_text)
                except ValueError:
                    raise DataError(f"{where}: ClassId {class_text!r} is not an integer") from None
                yield line_number, image_id.strip(), class_id, encoded.strip()
