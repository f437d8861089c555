"""Sliding-window inference for photos of any size and aspect, in memory bounded by the tiles.

Inspection photos (e.g. 4000x3000) are far larger than the crops a model trains on. The
photo is cut into overlapping tiles, run in batches, and the tiles' probabilities are
blended by a weighted average whose weights fall towards each tile's border, where a
convolutional network sees the least context (max-blending would keep every border
artefact). Sides are padded (by reflection) to what the network accepts and the result is
cropped back, so the output always has exactly the photo's size.

numpy and OpenCV only: the ONNX runtime shares this code without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np

from defectseg.utils.errors import ConfigError

#: N x 3 x h x w float32 images in [0, 1] -> N x C x h x w float32 probabilities
ProbabilityFn = Callable[[np.ndarray], np.ndarray]

#: blending weight at a tile side's outermost pixel, relative to its centre (never 0: a photo's own
#: border is covered by one tile only, and a zero weight there would divide by zero); a corner gets its square
MIN_WEIGHT = 1e-3

#: largest tile side of the fitted layout: a fully convolutional network does the same work per pixel at any
#: tile size, so fewer, larger tiles only cut the pixels computed twice (a 1024 px fp32 tile of unet_paper took
#: ~0.9 GB more memory in PyTorch, ~1.7 GB in ONNX Runtime: docs/speed.md)
MAX_TILE = 1024

#: px neighbouring tiles of the fitted layout share: unet_paper's receptive field is ~200 px, so the cross-fade
#: at the middle of 128 shared px uses pixels 64 px inside each tile, past most of the zero padding's influence
DEFAULT_MARGIN = 128


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def axis_layout(length: int, tile: int, overlap: float, multiple: int) -> tuple[int, int, list[int]]:
    """(padded length, tile length, tile origins) along one side.

    A side that fits in one tile is padded to the next multiple the network accepts and
    run whole; a longer side gets evenly spaced tiles sharing at least ``overlap`` of a tile.
    """
    if length <= tile:
        padded = round_up(length, multiple)
        return padded, padded, [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    origins = np.linspace(0, length - tile, count).round().astype(int).tolist()
    return length, tile, origins


def fitted_layout(length: int, max_tile: int, margin: int, multiple: int) -> tuple[int, int, list[int]]:
    """(padded length, tile length, tile origins) along one side: as few tiles as fit under ``max_tile``,
    neighbours sharing at least ``margin`` px, every tile shrunk to the smallest allowed size that still covers.

    The grid of ``axis_layout`` keeps its tile size and spreads the slack into the overlap (a 3456 px side in
    1024 px tiles runs 4096 px); fitting the tiles to the side keeps the pixels computed twice near ``margin``.
    """
    max_tile = round_up(max(int(max_tile), int(multiple)), int(multiple))
    if length <= max_tile:
        padded = round_up(length, multiple)
        return padded, padded, [0]
    margin = min(int(margin), max_tile // 2)
    count = math.ceil((length - margin) / (max_tile - margin))
    tile = min(max_tile, round_up(math.ceil((length + (count - 1) * margin) / count), multiple))
    origins = np.linspace(0, length - tile, count).round().astype(int).tolist()
    return length, tile, origins


def blend_profile(length: int, ramp: int | None = None) -> np.ndarray:
    """One side's blending weights (sampled at pixel centres, peak 1, floored at MIN_WEIGHT) as float32.

    ``ramp`` None: a Hann window over the whole side. ``ramp`` px: flat 1 inside, rising as a Hann half-window over
    the ``ramp`` px at each edge, so two neighbours sharing ``ramp`` px cross-fade there and nowhere else.
    """
    centres = np.arange(length) + 0.5
    if ramp is None:
        profile = np.sin(np.pi * centres / length) ** 2
    else:
        edge = np.minimum(centres, length - centres)  # distance of each pixel centre to the border
        profile = np.sin(0.5 * np.pi * np.minimum(edge / max(ramp, 1), 1.0)) ** 2
    return np.maximum(profile / profile.max(), MIN_WEIGHT).astype(np.float32)


def blend_window(height: int, width: int, ramp: int | None = None) -> np.ndarray:
    """A tile's blending weights (H x W float32): the outer product of its sides' ``blend_profile``.

    Separable on purpose: the weights that a full grid of tiles sums at a pixel are then the product of the row and
    column sums, so blending never needs a weight map the size of the photo.
    """
    return np.outer(blend_profile(height, ramp), blend_profile(width, ramp))


def summed_profile(padded: int, tile: int, origins: list[int], profile: np.ndarray) -> np.ndarray:
    """Along one side, the sum of every tile's ``profile`` at each pixel."""
    total = np.zeros(padded, np.float32)
    for origin in origins:
        total[origin : origin + tile] += profile
    return total


def _tile_batches(origins: list[tuple[int, int]], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(origins), batch_size):
        yield origins[start : start + batch_size]


def predict_tiled(
    image: np.ndarray,
    predict: ProbabilityFn,
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    multiple: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """Probabilities (C x H x W float32) for an H x W x 3 uint8 photo of any size.

    ``margin`` None: a grid of ``tile_size`` tiles sharing ``overlap`` of a tile, Hann-blended. ``margin`` px: the
    fitted layout (``fitted_layout``): tiles of at most ``tile_size`` sharing ``margin`` px, cross-faded over them
    only; ``overlap`` is then unused. A forward pass gets at most ``batch_size`` tiles and ``MAX_TILE``² pixels
    (one tile when tiles are larger), so memory is bounded by the tiles, not the photo, besides the output itself.
    ``on_progress(tiles_done, tiles_total)`` is called after every batch (a large photo takes minutes on a CPU).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"predict_tiled expects an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"tiling.overlap must lie in [0, 1), got {overlap}")
    if int(tile_size) < 1 or int(batch_size) < 1 or int(multiple) < 1 or (margin is not None and int(margin) < 0):
        raise ConfigError(
            f"tiling.tile_size ({tile_size}), tiling.batch_size ({batch_size}) and the model's size multiple "
            f"({multiple}) must be positive, the tiling margin ({margin}) not negative"
        )
    height, width = image.shape[:2]
    tile = round_up(max(int(tile_size), int(multiple)), int(multiple))
    if margin is None:
        padded_h, tile_h, rows = axis_layout(height, tile, overlap, multiple)
        padded_w, tile_w, cols = axis_layout(width, tile, overlap, multiple)
    else:
        padded_h, tile_h, rows = fitted_layout(height, tile, int(margin), multiple)
        padded_w, tile_w, cols = fitted_layout(width, tile, int(margin), multiple)
    pad = ((0, padded_h - height), (0, padded_w - width), (0, 0))
    padded = np.pad(image, pad, mode="reflect") if (padded_h, padded_w) != (height, width) else image
    origins = [(y, x) for y in rows for x in cols]
    ramp = None if margin is None else max(1, int(margin))
    if len(origins) == 1:
        row_profile, col_profile = np.ones(tile_h, np.float32), np.ones(tile_w, np.float32)
    else:
        row_profile, col_profile = blend_profile(tile_h, ramp), blend_profile(tile_w, ramp)
    window = np.outer(row_profile, col_profile)
    per_pass = max(1, min(int(batch_size), MAX_TILE * MAX_TILE // (tile_h * tile_w)))

    total: np.ndarray | None = None
    done = 0
    for batch_origins in _tile_batches(origins, per_pass):
        tiles = np.stack([padded[y : y + tile_h, x : x + tile_w] for y, x in batch_origins])
        tiles = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32)
        tiles *= np.float32(1.0 / 255.0)
        probabilities = np.asarray(predict(tiles), dtype=np.float32)
        if not probabilities.flags.writeable:
            probabilities = probabilities.copy()  # weighted in place below
        if (
            probabilities.ndim != 4
            or probabilities.shape[0] != len(batch_origins)
            or probabilities.shape[2:] != (tile_h, tile_w)
        ):
            raise ValueError(
                f"the model returned shape {probabilities.shape} for tiles of shape {tiles.shape}; "
                f"expected N x C x {tile_h} x {tile_w}"
            )
        if total is None:
            total = np.zeros((probabilities.shape[1], padded_h, padded_w), np.float32)
        for (y, x), tile_probabilities in zip(batch_origins, probabilities):
            tile_probabilities *= window
            total[:, y : y + tile_h, x : x + tile_w] += tile_probabilities
        del tiles, probabilities
        done += len(batch_origins)
        if on_progress is not None:
            on_progress(done, len(origins))
    assert total is not None
    # every (row, column) pair is a tile, so the summed weights are the outer product of the sides' sums
    total /= summed_profile(padded_h, tile_h, rows, row_profile)[:, None]
    total /= summed_profile(padded_w, tile_w, cols, col_profile)[None, :]
    return total[:, :height, :width]


def probability_maps(
    image: np.ndarray,
    predict: ProbabilityFn,
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    multiple: int = 16,
    scale: float = 1.0,
    on_progress: Callable[[int, int], None] | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """Probabilities (C x H x W float32 in [0, 1]) of every output channel, ``scale`` resampling the photo first.

    ``scale`` < 1 shows the model a photo shrunk to the pixel size it was trained at; the
    probabilities are resized back, so the maps still have the photo's exact size. ``margin``: see ``predict_tiled``.
    """
    if scale <= 0:
        raise ConfigError(f"scale must be positive, got {scale}")
    height, width = image.shape[:2]
    resized = image
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    probabilities = predict_tiled(resized, predict, tile_size, overlap, batch_size, multiple, on_progress, margin)
    if probabilities.shape[1:] != (height, width):
        probabilities = resize_maps(probabilities, height, width)
    return np.clip(probabilities, 0.0, 1.0, out=probabilities)


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """C x h x w float32 maps resized (bilinear) to C x ``height`` x ``width``, one channel at a time (any C)."""
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])


def probability_map(image: np.ndarray, predict: ProbabilityFn, **settings: Any) -> np.ndarray:
    """Defect probability (H x W float32) of a binary model: ``probability_maps``' one channel (same settings)."""
    probabilities = probability_maps(image, predict, **settings)
    if probabilities.shape[0] != 1:
        raise ValueError(
            f"the model predicts {probabilities.shape[0]} channels; probability_map is for binary (one-channel) "
            "models, probability_maps gives every channel"
        )
    return probabilities[0]
