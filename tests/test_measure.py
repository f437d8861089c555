"""Defect measurements on shapes whose area, length and width are known, and the overlay."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from defectseg.inference import measure, overlay
from defectseg.inference.measure import add_millimetres, measure_defects, remove_small_components, summarise
from defectseg.inference.overlay import draw_overlay


def strip(width: int, length: int = 60, vertical: bool = False) -> np.ndarray:
    mask = np.zeros((100, 100), dtype=bool)
    mask[20 : 20 + width, 10 : 10 + length] = True
    return mask.T.copy() if vertical else mask


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("vertical", [False, True])
def test_straight_strip_has_its_width_and_length(width, vertical):
    (defect,) = measure_defects(strip(width, 60, vertical))
    assert defect["area_px"] == 60 * width
    assert defect["bbox"] == ([20, 10, width, 60] if vertical else [10, 20, 60, width])
    assert defect["thin"] is True
    assert defect["max_width_px"] == pytest.approx(width, abs=0.01)
    assert defect["mean_width_px"] == pytest.approx(width, rel=0.05)
    assert defect["length_px"] == pytest.approx(60, rel=0.04)


def test_ring_length_is_its_circumference():
    mask = np.zeros((260, 260), np.uint8)
    cv2.circle(mask, (130, 130), 100, 1, thickness=3)
    (defect,) = measure_defects(mask)
    assert defect["thin"]
    assert defect["length_px"] == pytest.approx(2 * math.pi * 100, rel=0.02)
    assert defect["mean_width_px"] == pytest.approx(defect["area_px"] / (2 * math.pi * 100), rel=0.15)


@pytest.mark.parametrize("angle", [10, 30, 45, 60])
def test_slanted_crack_length_within_a_few_percent(angle):
    """Anti-aliasing-free 3 px crack of known centre-line length at several angles."""
    length = 150.0
    mask = np.zeros((240, 240), np.uint8)
    (x0, y0) = (40.0, 40.0)
    x1, y1 = x0 + length * math.cos(math.radians(angle)), y0 + length * math.sin(math.radians(angle))
    cv2.line(mask, (round(x0), round(y0)), (round(x1), round(y1)), 1, thickness=3)
    (defect,) = measure_defects(mask)
    # cv2's round caps add about half the thickness at each end
    assert defect["length_px"] == pytest.approx(length + 3, rel=0.04)


def test_a_blob_is_not_thin_and_reports_its_inscribed_diameter():
    mask = np.zeros((120, 120), np.uint8)
    cv2.circle(mask, (60, 60), 30, 1, thickness=-1)
    (defect,) = measure_defects(mask)
    assert defect["thin"] is False and defect["length_px"] is None and defect["mean_width_px"] is None
    assert defect["max_width_px"] == pytest.approx(61, abs=3)  # a digital disc's staircase rim eats into the diagonals


def test_components_numbered_largest_first_and_summarised_in_millimetres():
    mask = strip(5, 60)
    mask[60:80, 60:80] = True  # a 20x20 patch (400 px) beside the 300 px crack
    defects = measure_defects(mask)
    assert [d["area_px"] for d in defects] == [400, 300] and [d["id"] for d in defects] == [1, 2]
    assert defects[0]["area_percent"] == pytest.approx(4.0)
    summary = summarise(defects, mask.shape)
    assert summary["defects"] == 2 and summary["thin_defects"] == 1 and summary["defect_area_px"] == 700
    assert summary["defect_area_percent"] == pytest.approx(7.0)
    assert summary["total_length_px"] == defects[1]["length_px"]
    in_mm = add_millimetres(summary, 0.5)
    assert in_mm["defect_area_mm2"] == pytest.approx(175.0)
    assert in_mm["total_length_mm"] == pytest.approx(summary["total_length_px"] * 0.5)
    assert in_mm["max_width_mm"] == pytest.approx(10.0)
    assert add_millimetres(summary, None)["total_length_mm"] is None
    assert add_millimetres(defects[0], 0.5)["length_mm"] is None  # the patch has no length


def test_empty_mask_and_speckle_removal():
    assert measure_defects(np.zeros((10, 10), bool)) == []
    assert summarise([], (10, 10))["defect_area_percent"] == 0
    mask = strip(5, 60)
    mask[80, 80] = mask[90, 5:7] = True
    cleaned = remove_small_components(mask, min_area_px=10)
    assert cleaned.sum() == 300 and len(measure_defects(cleaned)) == 1


def test_overlay_tints_defects_and_outlines_them_only():
    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 15:35] = True
    out = draw_overlay(image, mask, color=(255, 0, 0), alpha=0.5, contour_color=(0, 255, 0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[20, 25]) == (178, 50, 50)  # inside: halfway to red
    assert np.array_equal(out[:5], image[:5])  # far from the defect: untouched
    assert out[10, 25, 1] > 150  # the outline is drawn on the boundary
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(image, mask, alpha=2.0)


def crossing_cracks_and_a_blob(height: int = 300, width: int = 420) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 10), (width - 1, height - 10), 1, 7)
    cv2.line(mask, (0, height - 1), (width - 1, 0), 1, 2)
    cv2.circle(mask, (width // 3, height // 2), 40, 1, -1)
    return mask.astype(bool)


def width_image(widths: measure.Widths, selected: np.ndarray) -> np.ndarray:
    image = np.full(selected.shape, np.nan, np.float32)
    for ys, xs, values in widths.blocks(selected):
        image[ys, xs] = values
    return image


@pytest.mark.parametrize("dense_pixels", [0, 10_000])  # every window through the k-d tree; crack windows dense
def test_large_boxes_get_widths_block_by_block_equal_to_the_whole_2x_map(monkeypatch, dense_pixels):
    """A large box's widths are looked up at the pixels asked for, a block at a time, not read off a 2x distance map
    of the box (0.5 GB for a blob filling half a 24 MP photo): they must equal the map's at every pixel, the widest
    point and the lengths included, whichever way each window is computed."""
    mask = crossing_cracks_and_a_blob()
    padded = np.pad(mask, 1)
    dense = measure.Widths(padded)
    dense_report = measure_defects(mask)
    monkeypatch.setattr(measure, "DENSE_WIDTH_PIXELS", dense_pixels)
    monkeypatch.setattr(measure, "MEASURE_BLOCK", 32)  # windows smaller than the box, skeleton bands of 32 rows
    sparse = measure.Widths(padded)
    whole = width_image(dense, padded)
    np.testing.assert_array_equal(width_image(sparse, padded), whole)
    assert np.isnan(whole[~padded]).all() and not np.isnan(whole[padded]).any()
    assert sparse.maximum() == dense.maximum() == np.nanmax(whole) > 75  # the blob's ~80 px, not a crack's 7
    assert measure_defects(mask) == dense_report


def test_the_overlay_tints_a_band_at_a_time_exactly_as_all_at_once(monkeypatch):
    mask = crossing_cracks_and_a_blob()
    photo = np.random.default_rng(0).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    monkeypatch.setattr(overlay, "OVERLAY_BAND_ROWS", 10_000)
    whole = overlay.draw_overlay(photo, mask, labels=False)
    monkeypatch.setattr(overlay, "OVERLAY_BAND_ROWS", 13)
    np.testing.assert_array_equal(overlay.draw_overlay(photo, mask, labels=False), whole)
    assert (whole[mask] != photo[mask]).any() and (whole[~mask] == photo[~mask]).mean() > 0.95  # outlines only
