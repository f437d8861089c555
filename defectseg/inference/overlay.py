"""The picture an inspector looks at: defects tinted on the photo, their outlines drawn, numbered as in predictions.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

#: photos smaller than this (shorter side, px) get no numbers: they would hide the defects
MIN_SIDE_FOR_LABELS = 128


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

    The ``max_labels`` largest defects (``defects`` come largest first) get their number; more would hide the photo.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay.alpha must lie in [0, 1], got {alpha}")
    mask = mask.astype(bool)
    out = image.copy()
    tint = np.asarray(color, dtype=np.float32)
    out[mask] = (image[mask].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5).astype(np.uint8)
    short_side = min(image.shape[:2])
    thickness = max(1, short_side // 1000)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in contour_color), thickness, lineType=cv2.LINE_AA)
    if labels and short_side >= MIN_SIDE_FOR_LABELS:
        font_scale = max(0.35, short_side / 3000)
        for defect in list(defects)[: max(0, int(max_labels))]:
            x, y = defect["bbox"][:2]
            origin = (int(x), int(max(y - 3, 12 * font_scale + 2)))
            cv2.putText(
                out,
                str(defect["id"]),
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                (0, 0, 0),
                thickness + 2,
                cv2.LINE_AA,
            )
            cv2.putText(
                out,
                str(defect["id"]),
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                tuple(int(c) for c in contour_color),
                thickness,
                cv2.LINE_AA,
            )
    return out
