"""The fitted tile layout: few pixels computed twice, exact where it must be, memory bounded by the tiles."""

from __future__ import annotations

import itertools
import platform
import subprocess
import sys

import numpy as np
import pytest

from defectseg.inference import tiling
from defectseg.inference.tiling import axis_layout, blend_window, fitted_layout, predict_tiled


def pixelwise(images: np.ndarray) -> np.ndarray:
    """A model without spatial context: any tiling must reproduce it exactly."""
    return 1.0 / (1.0 + np.exp(-(images.mean(axis=1, keepdims=True) * 6.0 - 3.0)))


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("length", [3456, 2304, 1025, 6000, 700])
def test_fitted_tiles_cover_the_side_share_the_margin_and_fit_the_network(length):
    padded, tile, origins = fitted_layout(length, 1024, 128, 16)
    assert tile <= 1024 and tile % 16 == 0 and origins[0] == 0 and origins[-1] + tile == padded >= length
    assert all(tile - (b - a) >= 128 - 1 for a, b in itertools.pairwise(origins))  # origins are rounded to px
    # no tile more than the margin needs: one fewer tile could not cover the side
    assert (len(origins) - 1) * (1024 - 128) + 128 < length or len(origins) == 1


def test_the_fitted_layout_puts_far_fewer_pixels_through_the_network_than_the_old_grid():
    """8 MP inspection photo: 128 px tiles at 25 % overlap compute 1.8x its pixels; fitted 1024 px tiles ~1.25x."""

    def computed(layout) -> float:
        (_, tile_h, rows), (_, tile_w, cols) = layout(2304), layout(3456)
        return len(rows) * tile_h * len(cols) * tile_w / (2304 * 3456)

    grid = computed(lambda side: axis_layout(side, 128, 0.25, 16))
    fitted = computed(lambda side: fitted_layout(side, tiling.MAX_TILE, tiling.DEFAULT_MARGIN, 16))
    assert grid > 1.7 and fitted < 1.3


def test_fitted_tiling_reproduces_a_pixelwise_model_and_one_tile_is_one_pass():
    image = photo(300, 170, seed=3)
    whole = pixelwise(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)[0]
    for tile, margin in ((64, 16), (96, 40), (512, 16)):
        tiled = predict_tiled(image, pixelwise, tile_size=tile, batch_size=3, multiple=16, margin=margin)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
    calls: list[tuple[int, ...]] = []

    def recorded(images: np.ndarray) -> np.ndarray:
        calls.append(images.shape)
        return pixelwise(images)

    predict_tiled(image, recorded, tile_size=512, multiple=16, margin=16)
    assert calls == [(1, 3, 304, 176)]  # the whole photo (padded to the network's multiple) in one pass


def test_the_cross_fade_stays_inside_the_shared_pixels():
    window = blend_window(100, 100, ramp=20)
    assert window[20:80, 20:80].min() == pytest.approx(1.0) and window[0, 50] < 0.01 and window.min() > 0


def test_memory_is_bounded_by_the_tiles_not_the_photo(monkeypatch):
    """No pass gets more than MAX_TILE² pixels or batch_size tiles, whatever the photo (buffer sizes, not time)."""
    monkeypatch.setattr(tiling, "MAX_TILE", 64)
    shapes: list[tuple[int, ...]] = []

    def recorded(images: np.ndarray) -> np.ndarray:
        shapes.append(images.shape)
        return pixelwise(images)

    out = predict_tiled(photo(200, 300), recorded, tile_size=64, batch_size=8, multiple=16, margin=16)
    assert out.shape == (1, 200, 300)
    assert max(n * h * w for n, _, h, w in shapes) <= 64 * 64 and len(shapes) > 1
    shapes.clear()
    predict_tiled(photo(200, 300), recorded, tile_size=32, batch_size=3, multiple=16, margin=8)
    assert max(n for n, *_ in shapes) <= 3


def test_a_negative_margin_is_refused_with_its_name():
    with pytest.raises(ValueError, match="margin"):
        predict_tiled(photo(10, 10), pixelwise, margin=-1)


@pytest.mark.parametrize("margin", [None, 24])
def test_blending_without_a_weight_map_is_the_weighted_mean_of_the_tiles(margin):
    """The photo-sized weight map is gone (rows' x columns' sums instead): each pixel must still get the weighted
    mean of every tile covering it, for a model whose output depends on the tile (not only the pixel)."""
    image = photo(150, 230, seed=5)
    seen: list[np.ndarray] = []

    def by_tile(images: np.ndarray) -> np.ndarray:
        out = np.random.default_rng(len(seen)).random((images.shape[0], 2, *images.shape[2:])).astype(np.float32)
        seen.append(out.copy())
        return out

    tiled = predict_tiled(image, by_tile, tile_size=64, overlap=0.3, batch_size=2, multiple=16, margin=margin)
    if margin is None:
        (_, tile_h, rows), (_, tile_w, cols) = axis_layout(150, 64, 0.3, 16), axis_layout(230, 64, 0.3, 16)
    else:
        (_, tile_h, rows), (_, tile_w, cols) = fitted_layout(150, 64, margin, 16), fitted_layout(230, 64, margin, 16)
    window = blend_window(tile_h, tile_w, margin)
    outputs = iter(np.concatenate(seen))
    weighted, weights = np.zeros((2, 150, 230)), np.zeros((150, 230))
    for y, x in itertools.product(rows, cols):
        weighted[:, y : y + tile_h, x : x + tile_w] += next(outputs) * window
        weights[y : y + tile_h, x : x + tile_w] += window
    assert len(rows) > 1 and len(cols) > 1
    np.testing.assert_allclose(tiled, weighted / weights, rtol=1e-4, atol=1e-6)


FREED_HEAP_PROBE = """
import numpy as np
from defectseg.utils.memory import release_freed_memory

def resident_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

big = np.ones(16 << 20, np.uint8); del big  # glibc now serves blocks under 16 MB from the heap, as after a tile batch
blocks = [np.ones(1 << 20, np.uint8) for _ in range(80)]
pin = np.ones(1 << 16, np.uint8)  # in use above them, so the heap cannot simply shrink
del blocks
before = resident_mib()
trimmed = release_freed_memory() if TRIM else None
print(trimmed, before - resident_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_os_after_the_network_pass():
    """predict trims after the network pass: without it ~100 MB of freed activations stay resident under the masks."""

    def freed_mib(trim: bool) -> float:
        code = f"TRIM = {trim}\n" + FREED_HEAP_PROBE
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        trimmed, freed = done.stdout.split()
        assert trimmed == ("True" if trim else "None")
        return float(freed)

    assert freed_mib(trim=False) < 10  # the probe's 80 MB stay resident on their own
    assert freed_mib(trim=True) > 60
