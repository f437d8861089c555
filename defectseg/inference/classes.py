"""Models with defect classes (``dataset.classes``): from C-channel probabilities to class masks and defects per class.

- **softmax** models (the default: background + C channels) mark a defect where 1 - p(background) is above the
  defect threshold stage 2 tuned on validation (``threshold=`` overrides it), of the pixel's most probable class.
- **multilabel** models (``dataset.multilabel=true``: one sigmoid per class) mark a class where its probability is
  above its own threshold (the one stage 2 tuned per class, unless ``threshold=`` is given), so a pixel may carry
  several classes; the index mask then shows the most probable of them, the per-class masks keep every one.

Each class's mask loses its components smaller than ``min_defect_area_px``, then every component is measured with its
class: its area always, its length and width only for a *linear* class (``classes.linear``; by default the classes
whose name contains crack or scratch), so a corrosion patch is not given a crack's length. numpy and OpenCV only, as
the rest of inference: an exported model runs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectseg.inference.measure import add_millimetres, measure_defects, remove_small_components
from defectseg.inference.runtime import ModelInfo
from defectseg.utils.errors import ConfigError, UserError

#: Okabe & Ito's colour-blind-safe palette, black left out (index masks use it for the background)
OKABE_ITO = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)
#: classes.linear=null: classes whose name contains one of these are measured for length and width
LINEAR_WORDS = ("crack", "scratch")


def class_colors(count: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class, in class order (the palette repeats past seven classes)."""
    return [OKABE_ITO[k % len(OKABE_ITO)] for k in range(count)]


def mask_palette(count: int) -> list[int]:
    """A PNG palette: index 0 (background) black, index k the k-th class's overlay colour, the rest black."""
    flat = [0, 0, 0] + [value for color in class_colors(count) for value in color]
    return flat + [0] * (768 - len(flat))


def resolve_linear(setting: Any, classes: Sequence[str]) -> frozenset[str]:
    """``classes.linear``: null (names containing crack or scratch) or a list of the model's class names."""
    if setting is None:
        return frozenset(c for c in classes if any(word in c.lower() for word in LINEAR_WORDS))
    if isinstance(setting, str) or not isinstance(setting, Sequence):
        raise ConfigError(f"classes.linear={setting}: give null (auto) or a list of class names, e.g. [crack,scratch]")
    unknown = [str(name) for name in setting if str(name) not in classes]
    if unknown:
        raise UserError(
            f"classes.linear names {', '.join(unknown)}, which the model does not have: its classes are "
            f"[{', '.join(classes)}]"
        )
    return frozenset(str(name) for name in setting)


def resolve_thresholds(setting: Any, info: ModelInfo) -> list[float]:
    """Per-class thresholds of a multilabel model (``threshold=``: one for all, or a list, one per class; null: the
    model's own); a softmax model's one defect threshold (``threshold=`` one value; null: the tuned one)."""
    classes = info.classes or []
    if not info.multilabel:
        if setting is None:
            return [float(info.threshold)]
        if not isinstance(setting, (int, float)) or not 0.0 < float(setting) < 1.0:
            raise UserError(
                f"threshold={setting}: a softmax model (classes {', '.join(classes)}) takes one defect threshold "
                "strictly between 0 and 1 (a pixel is a defect where 1 - p(background) is above it)"
            )
        return [float(setting)]
    if setting is None:
        return [float(t) for t in (info.class_thresholds or [info.threshold] * len(classes))]
    values = [setting] * len(classes) if isinstance(setting, (int, float)) else list(setting)
    if len(values) != len(classes):
        raise UserError(f"threshold={list(values)}: give one value or {len(classes)}, one per class {classes}")
    if not all(isinstance(v, (int, float)) and 0.0 < float(v) < 1.0 for v in values):
        raise UserError(f"threshold={list(values)}: every threshold must lie strictly between 0 and 1")
    return [float(v) for v in values]


@dataclass(frozen=True)
class ClassDecoder:
    """How one run turns a model's C-channel probabilities into class masks and measured defects."""

    names: tuple[str, ...]
    multilabel: bool
    #: multilabel: one per class; softmax: the one defect threshold on 1 - p(background)
    thresholds: tuple[float, ...]
    linear: frozenset[str]

    @classmethod
    def for_model(cls, info: ModelInfo, threshold: Any, linear: Any) -> ClassDecoder:
        names = tuple(info.classes or ())
        thresholds = resolve_thresholds(threshold, info)
        return cls(names, info.multilabel, tuple(thresholds), resolve_linear(linear, names))

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return class_colors(len(self.names))

    @property
    def channels(self) -> list[str]:
        """What each output channel holds (a softmax model's channel 0 is the background)."""
        return list(self.names) if self.multilabel else ["background", *self.names]

    def masks(self, probabilities: np.ndarray, min_area_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(H x W uint8 index mask, 0 background and k the k-th class; C x H x W bool per-class masks), components
        smaller than ``min_area_px`` removed from each class."""
        expected = len(self.channels)
        if probabilities.ndim != 3 or probabilities.shape[0] != expected:
            raise ValueError(
                f"the model returned {probabilities.shape[0]} channel(s); a "
                f"{'multilabel' if self.multilabel else 'softmax'} model of {len(self.names)} classes has {expected}"
            )
        if self.multilabel:
            raw = probabilities > np.asarray(self.thresholds, np.float32)[:, None, None]
        else:
            winner = np.where(1.0 - probabilities[0] > self.thresholds[0], probabilities[1:].argmax(axis=0) + 1, 0)
            raw = winner[None] == np.arange(1, len(self.names) + 1)[:, None, None]
        class_masks = np.stack([remove_small_components(m, min_area_px) for m in raw])
        labels = np.zeros(probabilities.shape[1:], np.uint8)
        if self.multilabel:  # the index mask shows the most probable of a pixel's classes
            scores = np.where(class_masks, probabilities, np.float32(-1.0))
            best = scores.argmax(axis=0).astype(np.uint8) + np.uint8(1)
            labels[class_masks.any(axis=0)] = best[class_masks.any(axis=0)]
        else:
            for k, mask in enumerate(class_masks, start=1):
                labels[mask] = k
        return labels, class_masks

    def measure(
        self, class_masks: np.ndarray, thin_min_elongation: float, mm_per_px: float | None
    ) -> list[dict[str, Any]]:
        """Every component of every class, largest first, numbered 1.. across the photo: its class (``type``), area,
        box, centroid; length and widths for linear classes only."""
        defects = []
        for name, mask in zip(self.names, class_masks):
            for defect in measure_defects(mask, thin_min_elongation, linear=name in self.linear):
                defects.append({"type": name, **defect})
        defects.sort(key=lambda d: (-d["area_px"], d["bbox"][1], d["bbox"][0], self.names.index(d["type"])))
        return [add_millimetres({**d, "id": number}, mm_per_px) for number, d in enumerate(defects, start=1)]

    def per_class(
        self, defects: list[dict[str, Any]], image_shape: tuple[int, int], mm_per_px: float | None
    ) -> dict[str, dict[str, Any]]:
        """Per class: defects, area (px, % of the photo), for linear classes total length and widest point; each also
        in mm / mm² with a scale (None without)."""
        pixels = image_shape[0] * image_shape[1]
        out = {}
        for name in self.names:
            found = [d for d in defects if d["type"] == name]
            area = sum(d["area_px"] for d in found)
            entry: dict[str, Any] = {
                "defects": len(found),
                "area_px": area,
                "area_percent": round(100.0 * area / pixels, 4),
            }
            if name in self.linear:
                entry["length_px"] = round(sum(d["length_px"] for d in found), 3)
                entry["max_width_px"] = max((d["max_width_px"] for d in found), default=0.0)
            out[name] = add_millimetres(entry, mm_per_px)
        return out

    def columns(self) -> list[str]:
        """predictions.csv's per-class columns (``CLASS_defects``, ``CLASS_area_px`` ...), in class order."""
        columns = []
        for name in self.names:
            keys = ["defects", "area_px", "area_percent", "area_mm2"]
            if name in self.linear:
                keys += ["length_px", "length_mm", "max_width_px", "max_width_mm"]
            columns += [f"{name}_{key}" for key in keys]
        return columns

    def describe(self) -> dict[str, Any]:
        """What predictions.json's ``model`` records about the classes of a run (beside ``classes``, ``multilabel``)."""
        return {
            "class_thresholds": list(self.thresholds) if self.multilabel else None,
            "linear_classes": [name for name in self.names if name in self.linear],
            "class_colors": {name: list(color) for name, color in zip(self.names, self.colors)},
            "mask_values": {name: k for k, name in enumerate(self.names, start=1)},
            "channels": self.channels,
        }


def flat_columns(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{crack: {defects: 2}}`` -> ``{crack_defects: 2}``: the per-class summary as predictions.csv columns."""
    return {f"{name}_{key}": value for name, entry in per_class.items() for key, value in entry.items()}
