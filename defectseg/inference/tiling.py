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

import cv2
import numpy as np

#: N x 3 x h x w float32 images in [0, 1] -> N x C x h x w float32 probabilities
ProbabilityFn = Callable[[np.ndarray], np.ndarray]

#: blending weight at a tile's outermost pixel, relative to its centre (never 0: a photo's own
#: border is covered by one tile only, and a zero weight there would divide by zero)
MIN_WEIGHT = 1e-3


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


def blend_window(height: int, width: int) -> np.ndarray:
    """Separable Hann window (sampled at pixel centres, floored at MIN_WEIGHT) as HxW float32."""

    def hann(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    window = np.outer(hann(height), hann(width))
    return np.maximum(window / window.max(), MIN_WEIGHT).astype(np.float32)


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
) -> np.ndarray:
    """Probabilities (C x H x W float32) for an H x W x 3 uint8 photo of any size.

    ``on_progress(tiles_done, tiles_total)`` is called after every batch (a large photo takes minutes on a CPU).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"predict_tiled expects an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tiling.overlap must lie in [0, 1), got {overlap}")
    if int(tile_size) < 1 or int(batch_size) < 1 or int(multiple) < 1:
        raise ValueError(
            f"tiling.tile_size ({tile_size}), tiling.batch_size ({batch_size}) and the model's size multiple ({multiple}) must be positive"
        )
    height, width = image.shape[:2]
    tile = round_up(max(int(tile_size), int(multiple)), int(multiple))
    padded_h, tile_h, rows = axis_layout(height, tile, overlap, multiple)
    padded_w, tile_w, cols = axis_layout(width, tile, overlap, multiple)
    padded = np.pad(image, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect")
    origins = [(y, x) for y in rows for x in cols]
    window = blend_window(tile_h, tile_w) if len(origins) > 1 else np.ones((tile_h, tile_w), np.float32)

    total: np.ndarray | None = None
    weight = np.zeros((padded_h, padded_w), np.float32)
    done = 0
    for batch_origins in _tile_batches(origins, int(batch_size)):
        tiles = np.stack([padded[y : y + tile_h, x : x + tile_w] for y, x in batch_origins])
        tiles = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        probabilities = np.asarray(predict(tiles), dtype=np.float32)
        if (
            probabilities.ndim != 4
            or probabilities.shape[0] != len(batch_origins)
            or probabilities.shape[2:] != (tile_h, tile_w)
        ):
            raise ValueError(
                f"the model returned shape {probabilities.shape} for tiles of shape {tiles.shape}; expected N x C x {tile_h} x {tile_w}"
            )
        if total is None:
            total = np.zeros((probabilities.shape[1], padded_h, padded_w), np.float32)
        for (y, x), tile_probabilities in zip(batch_origins, probabilities):
            total[:, y : y + tile_h, x : x + tile_w] += tile_probabilities * window
            weight[y : y + tile_h, x : x + tile_w] += window
        done += len(batch_origins)
        if on_progress is not None:
            on_progress(done, len(origins))
    assert total is not None
    total /= weight
    return total[:, :height, :width]


def probability_map(
    image: np.ndarray,
    predict: ProbabilityFn,
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    multiple: int = 16,
    scale: float = 1.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Defect probability (H x W float32) of a binary model, ``scale`` resampling the photo first.

    ``scale`` < 1 shows the model a photo shrunk to the pixel size it was trained at; the
    probabilities are resized back, so the map still has the photo's exact size.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    height, width = image.shape[:2]
    resized = image
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    probabilities = predict_tiled(resized, predict, tile_size, overlap, batch_size, multiple, on_progress)
    if probabilities.shape[0] != 1:
        raise ValueError(
            f"the model predicts {probabilities.shape[0]} channels; predict handles binary (one-channel) defect models"
        )
    probability = probabilities[0]
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(probability, 0.0, 1.0)
