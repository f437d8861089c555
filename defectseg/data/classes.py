"""Defect classes: what ``dataset.classes`` declares and how each mask layout's values become class labels.

A multi-class mask is read into one *label map* (HxW uint8), the form the cache, the
augmentations (nearest-neighbour only) and the loss share:

- exclusive classes (the default, softmax over background + C): 0 = background, k = the
  k-th declared class (1-based), ``IGNORE`` (255) = not scored (VOC's void border);
- ``multilabel`` (one sigmoid per class, a pixel may carry two): bit k-1 set for class k,
  so at most 7 classes; ``IGNORE`` as above.

Binary runs (no ``dataset.classes``) keep their 0/255 masks; only a void value read as
``ignore`` makes them label maps {0, 1, 255}. Labels come from class-index masks (values
0..C, palette PNGs read as indices), colour masks with a colour -> class table, or a
binary mask whose class is the image's (its folder, file-name prefix or a CSV); a value,
colour or image class that matches no declared class is an error naming the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from defectseg.data import readers
from defectseg.data.readers import DataError
from defectseg.utils.errors import ConfigError

IGNORE = 255
MAX_MULTILABEL = 7
CLASS_SOURCES = ("folder", "prefix", "csv")


@dataclass(frozen=True)
class ClassSpec:
    """The declared defect classes (background implicit) and whether a pixel may carry several."""

    names: tuple[str, ...]
    multilabel: bool = False

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("dataset.classes is empty: name at least one defect class, or null for binary")
        bad = [n for n in self.names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ConfigError(f"dataset.classes: every class needs a name (a non-empty string), got {bad}")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"dataset.classes names {duplicates} twice")
        if "background" in self.names:
            raise ConfigError("dataset.classes: 'background' is implicit (label 0); list only the defect classes")
        if self.multilabel and len(self.names) > MAX_MULTILABEL:
            raise ConfigError(
                f"dataset.multilabel=true supports at most {MAX_MULTILABEL} classes, got {len(self.names)}"
            )
        if len(self.names) >= IGNORE:
            raise ConfigError(f"dataset.classes: at most {IGNORE - 1} classes, got {len(self.names)}")

    @classmethod
    def from_config(cls, classes: Sequence[str] | None, multilabel: bool = False) -> ClassSpec | None:
        if classes is None:
            if multilabel:
                raise ConfigError("dataset.multilabel=true needs dataset.classes (the names of the classes)")
            return None
        if isinstance(classes, str):
            raise ConfigError(f"dataset.classes must be a list of names, got the string {classes!r}")
        return cls(tuple(str(name) for name in classes), bool(multilabel))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def output_channels(self) -> int:
        """Logit maps the model needs: one per class (multilabel), or background + one per class (softmax)."""
        return self.num_classes if self.multilabel else self.num_classes + 1

    def index(self, name: str) -> int | None:
        """1-based label of a class name, None when it is not declared."""
        return self.names.index(name) + 1 if name in self.names else None

    def from_indices(self, indices: np.ndarray) -> np.ndarray:
        """A 0..C (+ IGNORE) index map as this spec's label map (bit flags when multilabel)."""
        indices = indices.astype(np.uint8)
        if not self.multilabel:
            return indices
        out = np.where(indices > 0, np.left_shift(1, np.maximum(indices, 1) - 1), 0).astype(np.uint8)
        out[indices == IGNORE] = IGNORE
        return out

    def class_layers(self, label_map: np.ndarray) -> np.ndarray:
        """Label map -> C x H x W {0, 1} (ignored pixels 0): which pixels carry each class."""
        label_map = np.asarray(label_map)
        valid = label_map != IGNORE
        if self.multilabel:
            layers = [((label_map >> k) & 1).astype(bool) & valid for k in range(self.num_classes)]
        else:
            layers = [label_map == k + 1 for k in range(self.num_classes)]
        return np.stack(layers).astype(np.uint8)


def parse_color(value: object, where: str) -> tuple[int, int, int]:
    """``[r, g, b]`` or ``"#rrggbb"`` to a tuple of three 0..255 integers."""
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        try:
            return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    raise ConfigError(f"{where}={value!r} is not a colour: write [r, g, b] (0..255) or '#rrggbb'")


def decode_indices(
    values: np.ndarray,
    spec: ClassSpec,
    class_values: Sequence[int] | None,
    void_value: int | None,
    void_as: str,
    source,
) -> np.ndarray:
    """Class-index mask -> index map; ``class_values``: the mask value of each declared class (default 1..C)."""
    if not np.issubdtype(values.dtype, np.integer) and values.dtype != bool:
        raise DataError(f"{source}: class-index mask of type {values.dtype}, expected integers", kind="mask_values")
    wanted = list(class_values) if class_values is not None else list(range(1, spec.num_classes + 1))
    out = np.zeros(values.shape, np.uint8)
    known = values == 0
    for label, value in enumerate(wanted, start=1):
        hit = values == value
        out[hit] = label
        known |= hit
    if void_value is not None:
        void = values == void_value
        out[void] = IGNORE if void_as == "ignore" else (0 if void_as == "background" else _refuse_void_as(source))
        known |= void
    if not known.all():
        unknown = np.unique(values[~known])
        raise DataError(
            f"{source}: mask values {unknown[:8].tolist()}{'...' if unknown.size > 8 else ''} match no declared class "
            f"(dataset.classes={list(spec.names)} are the values {wanted}"
            f"{'' if void_value is None else f', void {void_value}'}); declare them or fix the mask",
            kind="mask_values",
        )
    return out


def _refuse_void_as(source: object) -> int:
    raise DataError(f"{source}: void_as=defect has no class to give the void pixels; use ignore or background")


def decode_colors(
    rgb: np.ndarray, spec: ClassSpec, colors: Mapping[str, tuple[int, int, int]], background, void_color, source
) -> np.ndarray:
    """Colour mask -> index map by the colour -> class table; any other colour is an error naming it."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.zeros(packed.shape, np.uint8)
    known = packed == _pack(background)
    for name, color in colors.items():
        hit = packed == _pack(color)
        out[hit] = spec.index(name)
        known |= hit
    if void_color is not None:
        void = packed == _pack(void_color)
        out[void] = IGNORE
        known |= void
    if not known.all():
        unknown = np.unique(packed[~known])
        shown = ", ".join(f"#{int(c):06x}" for c in unknown[:6]) + (" ..." if unknown.size > 6 else "")
        raise DataError(
            f"{source}: {int((~known).sum())} pixels in colours {shown} that are in no entry of dataset.layout.colors "
            f"({', '.join(f'{n} #{_pack(c):06x}' for n, c in colors.items())}; background #{_pack(background):06x}); "
            "anti-aliased edges? save colour masks without smoothing",
            kind="mask_values",
        )
    return out


def _pack(color: Sequence[int]) -> int:
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


class ImageClasses:
    """The class of each image, for binary masks whose class is the image's (one defect kind per photo).

    ``folder``: the first folder of the image's path below the layout's image folder (``Crack/x.jpg``);
    ``prefix``: the file name before ``separator`` (magnetic_tile's ``Crack__exp1.jpg``); ``csv``: a file
    with a ``stem`` column and a class column (``class``, else the first whose name holds "class": magnetic_tile's
    ``classes.csv`` has ``defect_class``), relative to the data set's root.
    ``aliases`` maps found names to declared ones (``{MT_Crack: crack}``).
    """

    def __init__(
        self, source: str, separator: str = "__", csv_file: str | None = None, aliases: Mapping[str, str] | None = None
    ) -> None:
        if source not in CLASS_SOURCES:
            raise ConfigError(f"dataset.layout.class_from={source!r} is not one of {list(CLASS_SOURCES)}")
        if source == "csv" and not csv_file:
            raise ConfigError("dataset.layout.class_from=csv needs dataset.layout.class_csv (a file with stem,class)")
        if source == "prefix" and not separator:
            raise ConfigError("dataset.layout.class_separator is empty: the prefix would be the whole name")
        self.source, self.separator, self.csv_file = source, separator, csv_file
        self.aliases = {str(k): str(v) for k, v in dict(aliases or {}).items()}
        self._tables: dict[Path, dict[str, str]] = {}

    def of(self, image: Path, image_root: Path, data_root: Path) -> tuple[str | None, str]:
        """(class name or None when the image has none, where it came from) for one image."""
        if self.source == "prefix":
            found = image.stem.split(self.separator, 1)[0] if self.separator in image.stem else None
            where = f"file-name prefix before {self.separator!r}"
        elif self.source == "folder":
            parts = image.relative_to(image_root).parts
            found = parts[0] if len(parts) > 1 else None
            where = f"folder below {image_root}"
        else:
            found = self._table(Path(data_root) / str(self.csv_file)).get(image.stem)
            where = f"{Path(data_root) / str(self.csv_file)}"
        return (self.aliases.get(found, found) if found is not None else None), where

    def _table(self, path: Path) -> dict[str, str]:
        if path not in self._tables:
            if not path.is_file():
                raise DataError(f"{path}: class table does not exist (dataset.layout.class_csv)")
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            columns = list(rows[0]) if rows else []
            named = [c for c in columns if c == "class"] or [c for c in columns if "class" in c.lower()]
            if rows and ("stem" not in columns or not named):
                raise DataError(f"{path}: needs a stem column and a class column (e.g. class), has {columns}")
            self._tables[path] = {row["stem"]: row[named[0]] for row in rows}
        return self._tables[path]


def decode_image_class(binary: np.ndarray, spec: ClassSpec, name: str | None, where: str, source) -> np.ndarray:
    """A binary mask (0/1, IGNORE kept) labelled with its image's class; an empty mask needs no class."""
    defect = binary == 1
    if not defect.any():
        return binary.astype(np.uint8)
    label = spec.index(name) if name is not None else None
    if label is None:
        found = "no class" if name is None else f"class {name!r}"
        raise DataError(
            f"{source}: its image has {found} ({where}), not one of dataset.classes={list(spec.names)}, "
            "but its mask marks defects",
            kind="mask_values",
        )
    out = np.where(defect, label, binary).astype(np.uint8)
    return out


def class_pixel_counts(label_maps: Iterable[np.ndarray], spec: ClassSpec) -> tuple[list[int], list[int], int]:
    """Per class: pixels and images that carry it; and the background pixels (ignored ones counted in neither)."""
    pixels, images, background = [0] * spec.num_classes, [0] * spec.num_classes, 0
    for label_map in label_maps:
        layers = spec.class_layers(label_map)
        counts = layers.reshape(spec.num_classes, -1).sum(axis=1)
        for k, count in enumerate(counts.tolist()):
            pixels[k] += int(count)
            images[k] += int(count > 0)
        background += int((label_map == 0).sum())
    return pixels, images, background


# --- mask values -----------------------------------------------------------------------------------

MASK_VALUE_MODES = ("binary", "classes", "colors")
VOID_AS = ("ignore", "background", "defect")


@dataclass(frozen=True)
class MaskValues:
    """How a mask's values become labels: defect (1) / background (0) for a binary run, or the declared classes.

    ``binary``: 0/1 or 0/255 (soft 8-bit edges thresholded at 128); class indices are refused.
    With ``dataset.classes``, the class is the image's (``class_from`` on the layout).
    ``classes``: class-index masks (palette PNGs read as indices, not colours). Binary run: every
    class other than 0 is a defect, or only ``keep_classes``. With ``dataset.classes``: value k is the
    k-th class, or ``class_values`` lists each class's value.
    ``colors``: colour masks (RGB or palette colours) with ``colors`` (class name -> colour), needs
    ``dataset.classes``. ``void_value`` (VOC: 255, the 'don't care' border around objects) /
    ``void_color`` become ``void_as``: ``ignore`` (default: left out of loss and metrics),
    ``background`` or ``defect`` (binary runs only).
    """

    mode: str = "binary"
    keep_classes: tuple[int, ...] | None = None
    void_value: int | None = None
    void_as: str = "ignore"
    class_values: tuple[int, ...] | None = None
    colors: tuple[tuple[str, tuple[int, int, int]], ...] | None = None
    background_color: tuple[int, int, int] = (0, 0, 0)
    void_color: tuple[int, int, int] | None = None
    spec: ClassSpec | None = None

    def __post_init__(self) -> None:
        if self.mode not in MASK_VALUE_MODES:
            raise ConfigError(f"dataset.layout.mask_values={self.mode!r} is not one of {list(MASK_VALUE_MODES)}")
        if self.void_as not in VOID_AS:
            raise ConfigError(f"dataset.layout.void_as={self.void_as!r} must be one of {list(VOID_AS)}")
        if self.mode == "binary" and (
            self.keep_classes is not None or self.void_value is not None or self.class_values is not None
        ):
            raise ConfigError(
                "dataset.layout.keep_classes / void_value / class_values need mask_values=classes (class-index masks)"
            )
        if self.mode != "colors" and self.colors is not None:
            raise ConfigError("dataset.layout.colors needs mask_values=colors (colour masks)")
        if self.mode == "colors" and not self.colors:
            raise ConfigError("dataset.layout.mask_values=colors needs dataset.layout.colors: {class name: [r, g, b]}")

    @classmethod
    def from_options(
        cls,
        mode: str,
        keep_classes: Iterable[int] | None,
        void_value: int | None,
        void_as: str,
        class_values: Iterable[int] | None = None,
        colors: Mapping[str, Any] | None = None,
        background_color: Any = (0, 0, 0),
        void_color: Any = None,
    ) -> MaskValues:
        keep = None if keep_classes is None else tuple(sorted(int(c) for c in keep_classes))
        table = None
        if colors is not None:
            table = tuple(
                (str(name), parse_color(color, f"dataset.layout.colors.{name}")) for name, color in dict(colors).items()
            )
        return cls(
            mode=str(mode),
            keep_classes=keep,
            void_value=None if void_value is None else int(void_value),
            void_as=str(void_as),
            class_values=None if class_values is None else tuple(int(v) for v in class_values),
            colors=table,
            background_color=parse_color(background_color, "dataset.layout.background_color"),
            void_color=None if void_color is None else parse_color(void_color, "dataset.layout.void_color"),
        )

    def bind(self, spec: ClassSpec | None) -> MaskValues:
        """These options for a run with ``spec`` (None: binary), checked against the declared classes."""
        if spec is None:
            if self.mode == "colors":
                raise ConfigError(
                    "dataset.layout.mask_values=colors needs dataset.classes (the names the colours stand for)"
                )
            if self.class_values is not None:
                raise ConfigError(
                    "dataset.layout.class_values needs dataset.classes (the classes the values stand for)"
                )
            return replace(self, spec=None)
        if self.keep_classes is not None:
            raise ConfigError(
                "dataset.layout.keep_classes merges classes into one defect (binary runs); with dataset.classes, "
                "list each class's mask value in dataset.layout.class_values instead"
            )
        if self.void_as == "defect":
            raise ConfigError("dataset.layout.void_as=defect is for binary runs; with dataset.classes use ignore")
        if self.class_values is not None and len(self.class_values) != spec.num_classes:
            raise ConfigError(
                f"dataset.layout.class_values={list(self.class_values)} gives {len(self.class_values)} values "
                f"for {spec.num_classes} classes {list(spec.names)}"
            )
        if self.colors is not None:
            names = [name for name, _ in self.colors]
            missing, unknown = sorted(set(spec.names) - set(names)), sorted(set(names) - set(spec.names))
            if missing or unknown:
                raise ConfigError(
                    f"dataset.layout.colors names {names}, dataset.classes {list(spec.names)}"
                    + (f": no colour for {missing}" if missing else "")
                    + (f": {unknown} are not classes" if unknown else "")
                )
        return replace(self, spec=spec)

    @property
    def label_maps(self) -> bool:
        """Masks come as label maps (nearest-neighbour resizing, values kept), not 0/255 defect masks."""
        return self.spec is not None or (self.void_as == "ignore" and self.void_value is not None)

    def to_binary(self, values: np.ndarray, source: str | Path) -> np.ndarray:
        if self.mode == "binary":
            return readers.binary_mask(values, source)
        if not np.issubdtype(values.dtype, np.integer) and values.dtype != bool:
            raise DataError(f"{source}: class-index mask of type {values.dtype}, expected integers")
        defect = np.isin(values, self.keep_classes) if self.keep_classes is not None else values > 0
        if self.void_value is None:
            return defect.astype(np.uint8)
        void = values == self.void_value
        if self.void_as == "ignore":
            return np.where(void, IGNORE, defect & ~void).astype(np.uint8)
        defect = (defect & ~void) | void if self.void_as == "defect" else defect & ~void
        return defect.astype(np.uint8)

    def decode(
        self, raw: np.ndarray, source: str | Path, image_class: tuple[str | None, str] = (None, "")
    ) -> np.ndarray:
        """Raw mask values (RGB for colour masks) -> a binary mask, or the spec's label map."""
        if self.spec is None:
            return self.to_binary(raw, source)
        if self.mode == "classes":
            indices = decode_indices(raw, self.spec, self.class_values, self.void_value, self.void_as, source)
        elif self.mode == "colors":
            indices = decode_colors(
                raw, self.spec, dict(self.colors or ()), self.background_color, self.void_color, source
            )
        else:
            indices = decode_image_class(readers.binary_mask(raw, source), self.spec, *image_class, source)
        return self.spec.from_indices(indices)


class Mask(Protocol):
    def load(self, image_size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskFile:
    """A mask image; its size must be the image's. ``image_class``: (the image's class, where it came from)."""

    path: Path
    values: MaskValues = field(default_factory=MaskValues)
    image_class: tuple[str | None, str] = (None, "")

    def load(self, image_size: tuple[int, int]) -> np.ndarray:
        if self.values.mode == "colors":
            raw = readers.read_mask_colors(self.path, expected_size=image_size)
        else:
            raw = readers.read_mask_values(self.path, expected_size=image_size)
        return self.values.decode(raw, self.path, self.image_class)

    def __str__(self) -> str:
        return str(self.path)
