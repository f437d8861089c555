"""The picture an inspector looks at: defects tinted on the photo, outlined, numbered as in predictions.json and
labelled with their size (length and width of a crack, area of the rest; in mm where the photo's scale is known)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from defectseg.utils.errors import ConfigError

#: photos smaller than this (shorter side, px) get no numbers: they would hide the defects
MIN_SIDE_FOR_LABELS = 128


def _figure(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def defect_label(defect: dict[str, Any]) -> str:
    """``3: L 41.2mm W 0.8mm`` for a crack, ``3: 12.5mm2`` for the rest (px when there is no mm scale); ASCII only."""
    mm = defect.get("area_mm2") is not None
    unit = "mm" if mm else "px"
    if defect.get("length_px") is not None:
        length = defect["length_mm"] if mm else defect["length_px"]
        width = defect["mean_width_mm"] if mm else defect["mean_width_px"]
        return f"{defect['id']}: L {_figure(length)}{unit} W {_figure(width)}{unit}"
    area = defect["area_mm2"] if mm else defect["area_px"]
    return f"{defect['id']}: {_figure(area)}{unit}2"


#: rows tinted and outlined at a time: the float copy of the defect pixels is a band's (a blob over half a 24 MP
#: photo: 0.3 GB at once)
OVERLAY_BAND_ROWS = 512


def tint_pixels(out: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float) -> None:
    """Blend ``out``'s ``mask`` pixels towards ``color`` in place."""
    tint = np.asarray(color, dtype=np.float32)
    for top in range(0, out.shape[0], OVERLAY_BAND_ROWS):
        rows, band = out[top : top + OVERLAY_BAND_ROWS], mask[top : top + OVERLAY_BAND_ROWS]
        if band.any():
            rows[band] = (rows[band].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5).astype(np.uint8)


def pen_width(image: np.ndarray) -> int:
    """Outline and lettering width (px): 1 up to 2,000 px on the short side, thicker on larger photos."""
    return max(1, min(image.shape[:2]) // 1000)


def outline_pixels(out: np.ndarray, mask: np.ndarray, color: Sequence[int], thickness: int) -> None:
    """Paint the defects' edges (holes' included) ``thickness`` px wide in ``color``, in place.

    An edge pixel is a defect pixel with a background 4-neighbour, found by erosion a band of rows at a time:
    tracing contours and drawing them took 64 s and 0.9 GB on a 24 MP photo mostly marked as defect (millions of
    contour points); erosion is linear in the pixels and needs a band's memory.
    """
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    pen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness))
    halo = thickness // 2 + 1  # rows around a band that can put an edge, or widen one, into it
    ink = np.asarray(color, dtype=np.uint8)
    defects = np.asarray(mask, dtype=bool).view(np.uint8)
    for top in range(0, out.shape[0], OVERLAY_BAND_ROWS):
        first = max(0, top - halo)
        rows = defects[first : top + OVERLAY_BAND_ROWS + halo]
        if not rows.any():
            continue
        edges = cv2.dilate(rows - cv2.erode(rows, cross), pen)[top - first : top - first + OVERLAY_BAND_ROWS]
        out[top : top + len(edges)][edges.view(bool)] = ink


def draw_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    defects: Sequence[dict[str, Any]] = (),
    color: Sequence[int] = (255, 40, 40),
    alpha: float = 0.45,
    contour_color: Sequence[int] = (255, 255, 0),
    labels: bool = True,
    max_labels: int = 50,
) -> np.ndarray:
    """HxWx3 uint8 RGB: ``mask`` pixels blended towards ``color``, outlines (holes included) in ``contour_color``.

    The ``max_labels`` largest defects (``defects`` come largest first) get their number and size (defect_label);
    more would hide the photo.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay.alpha must lie in [0, 1], got {alpha}")
    mask = np.asarray(mask, dtype=bool)
    out = image.copy()
    tint_pixels(out, mask, color, alpha)
    thickness = pen_width(image)
    outline_pixels(out, mask, contour_color, thickness)
    if labels:
        ink = tuple(int(c) for c in contour_color)
        draw_labels(out, defects, max_labels, thickness, lambda defect: ink)
    return out


def draw_labels(
    out: np.ndarray,
    defects: Sequence[dict[str, Any]],
    max_labels: int,
    thickness: int,
    ink_of: Callable[[dict[str, Any]], tuple[int, ...]],
) -> None:
    """Number and size of the largest defects, in place, each in ``ink_of(defect)`` on a black outline (photos of
    MIN_SIDE_FOR_LABELS px and more)."""
    short_side = min(out.shape[:2])
    if short_side < MIN_SIDE_FOR_LABELS:
        return
    font_scale = max(0.35, short_side / 3000)
    for defect in list(defects)[: max(0, int(max_labels))]:
        text = defect_label(defect)
        (text_width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness + 2)
        x, y = defect["bbox"][:2]
        origin = (int(max(0, min(x, out.shape[1] - text_width))), int(max(y - 3, 12 * font_scale + 2)))
        for ink, weight in (((0, 0, 0), thickness + 2), (ink_of(defect), thickness)):
            cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, weight, cv2.LINE_AA)


def draw_class_overlay(
    image: np.ndarray,
    class_masks: np.ndarray,
    defects: Sequence[dict[str, Any]],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.45,
    labels: bool = True,
    max_labels: int = 50,
) -> np.ndarray:
    """A model with classes: each class tinted and outlined in its own colour (``colors``, class order), defects
    labelled in their class's colour, and below the photo a legend strip naming each class beside its colour.

    The photo keeps its pixel coordinates (the legend is added underneath): (H + legend) x W x 3 uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay.alpha must lie in [0, 1], got {alpha}")
    out = image.copy()
    thickness = pen_width(image)
    for mask, color in zip(class_masks, colors):  # a pixel of several classes (multilabel) blends them in turn
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        tint_pixels(out, mask, color, alpha)
        outline_pixels(out, mask, color, thickness)
    color_of = {name: tuple(int(c) for c in color) for name, color in zip(names, colors)}
    if labels:
        draw_labels(out, defects, max_labels, thickness, lambda defect: color_of.get(defect.get("type"), (255, 255, 0)))
    return np.concatenate([out, legend_strip(image.shape[1], names, colors)], axis=0)


def legend_strip(width: int, names: Sequence[str], colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A dark strip ``width`` px wide naming each class beside a swatch of its colour, wrapped onto as many rows as
    the names need (ASCII names; other characters show as '?')."""
    font_scale = max(0.35, min(1.0, width / 1200))
    thickness = 1
    (_, text_height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    row_height = text_height + baseline + 8
    swatch = text_height + baseline
    entries = []
    for name in names:
        text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(name))
        (text_width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        entries.append((text, swatch + 4 + text_width + 12))
    rows, x = 1, 4
    for _, entry_width in entries:
        if x > 4 and x + entry_width > width:
            rows, x = rows + 1, 4
        x += entry_width
    strip = np.full((rows * row_height + 4, width, 3), 32, np.uint8)
    row, x = 0, 4
    for (text, entry_width), color in zip(entries, colors):
        if x > 4 and x + entry_width > width:
            row, x = row + 1, 4
        top = 4 + row * row_height
        cv2.rectangle(strip, (x, top), (x + swatch - 1, top + swatch - 1), tuple(int(c) for c in color), cv2.FILLED)
        cv2.putText(
            strip,
            text,
            (x + swatch + 4, top + text_height),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
        x += entry_width
    return strip
