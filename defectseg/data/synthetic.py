"""Embedded synthetic data: a crack classification set (stage 1) and a steel-defect segmentation set (stage 2).

Why it exists: the pipeline must run end to end on a fresh machine with no downloads, and the paper's
stage-2 set (175 hand-labelled steel photos) is not public. The two generated sets imitate the two
domains of the paper -- concrete cracks for encoder pretraining, steel-structure defects for the
decoder -- and are written in the same folder layouts as the real sets, so one reader serves both.

Design choices that matter for experiments:

* Both stages draw their cracks with the same function, :func:`crack_alpha`, so what the stage-1
  encoder learns about crack *shape* can transfer, while backgrounds and statistics differ
  (concrete vs. brushed/painted/rusty steel) so the transfer is across domains, as in the paper.
* Stage-1 clutter (stains, pores, straight formwork lines) is drawn with the same probabilities in
  both classes: the only thing separating ``Positive`` from ``Negative`` is a crack, so a classifier
  cannot succeed by counting dark pixels.
* Stage-2 masks are exact: every defect is an opacity map ``alpha``; the image is painted with that
  ``alpha`` and the mask is ``alpha >= 0.5``. Background, defects and camera effects use separate
  random streams, so the same image can be re-rendered without its defects (tests use this to check
  that the mask covers exactly what the defects changed).
* Image ``i`` is drawn from ``default_rng`` seeded by ``(seed, stage, [label,] i)``: it is the same
  whatever the set size, so a larger set extends a smaller one.
* Stage-2 photos come in two conditions (:data:`CONDITIONS`). ``clean`` photos hold nothing but
  defects, welds and bolts, at full contrast in good light: a U-Net learns them from 123 labelled
  photos almost completely. ``field`` adds unlabelled look-alike marks, faint defects, dim
  exposures and sensor noise, as on inspection photos of real structures: a harder set where 123
  labels are not enough. Masks and defects stay those of the clean photo, so the two sets differ
  only in these conditions.
* Stage-2 defects are mixed (cracks, corrosion, pits, scratches) or one kind alone
  (:data:`DEFECT_SETS`), as the two training sets of the paper's Table 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = [
    "CONDITIONS",
    "CRACK_CLASSIFICATION",
    "CRACK_SEGMENTATION",
    "DEFECT_SETS",
    "MANIFEST_NAME",
    "STEEL_SEGMENTATION",
    "VERSION",
    "crack_alpha",
    "ensure_crack_classification",
    "ensure_crack_segmentation",
    "ensure_steel_segmentation",
    "generate_crack_classification",
    "generate_crack_segmentation",
    "generate_steel_segmentation",
    "read_manifest",
]

CRACK_CLASSIFICATION = "crack_classification"
STEEL_SEGMENTATION = "steel_segmentation"
CRACK_SEGMENTATION = "crack_segmentation"
#: Bump whenever the pictures change, so ``ensure_*`` regenerates sets made by older code.
VERSION = 1
MANIFEST_NAME = "GENERATED.json"
CLASS_DIRS = ("Positive", "Negative")  # Kaggle "Surface Crack Detection" layout
_STAGE_CLS, _STAGE_SEG = 1, 2  # mixed into the seeds so the two sets never share random streams
_FILE_RE = re.compile(r"^\d{5,}\.png$")
_STEEL_KINDS = ("brushed", "painted", "rusty")
_DEFECT_KINDS = ("crack", "corrosion", "pits", "scratch")
_EMPTY_FRACTION = 0.05  # real sets hold some defect-free photos; a model must learn to predict nothing
#: Stage-2 photo conditions. "clean" (the default): even light, every defect at full contrast,
#: nothing on the surface but the defects, welds and bolts -- 123 labelled photos teach a U-Net
#: nearly all of it (test Dice 0.88 from scratch at the paper's 100 epochs, where the paper's real
#: photos gave 0.71). "field": look-alike marks (:func:`_look_alikes`), faint defects, darker and
#: noisier exposures, as on photos of real structures (0.57 from scratch, same protocol).
CONDITIONS = ("clean", "field")
#: Stage-2 defect sets, as the two training sets of the paper's Table 1: "mixed" (the default: every
#: defect kind, like its set "of various types") or one kind alone, like its "single defect only" set.
#: A single-kind set keeps every random draw of the mixed one (backgrounds, number and placement
#: streams of defects, camera): only the painter changes.
DEFECT_SETS = ("mixed", *_DEFECT_KINDS)
_FIELD_SEVERITY = (0.3, 1.0)  # contrast of a defect, from faint (early, dirty, painted over) to full

Array = np.ndarray


# --------------------------------------------------------------------------------------------
# Noise primitives (PIL's bicubic resize of a coarse random grid is ~10x faster than ndimage.zoom)
# --------------------------------------------------------------------------------------------


def _aniso_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> Array:
    """Zero-mean, unit-std smooth noise whose features are about ``cell_y`` x ``cell_x`` pixels.

    A cell below 1.5 px leaves that axis as white noise: that is how brushed-metal streaks
    (long along one axis, sharp across it) come out of the same primitive.
    """
    smooth_y, smooth_x = cell_y >= 1.5, cell_x >= 1.5
    gy = int(np.ceil(h / cell_y)) + 4 if smooth_y else h
    gx = int(np.ceil(w / cell_x)) + 4 if smooth_x else w
    grid = rng.standard_normal((gy, gx), dtype=np.float32)
    if not (smooth_y or smooth_x):
        out = grid
    else:
        # upsample only the window that is needed (resize's box), at a random sub-cell phase so
        # the grid never lines up with the image, and clear of the grid's borders
        by0 = 1.5 + rng.random() if smooth_y else 0.0
        bx0 = 1.5 + rng.random() if smooth_x else 0.0
        box = (bx0, by0, bx0 + (w / cell_x if smooth_x else w), by0 + (h / cell_y if smooth_y else h))
        out = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC, box=box))
    out = out - out.mean()
    return (out / (out.std() + 1e-6)).astype(np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> Array:
    return _aniso_noise(rng, h, w, cell, cell)


def _fractal(rng: np.random.Generator, h: int, w: int, cells: Sequence[float], persistence: float = 0.6) -> Array:
    """Sum of octaves, coarse to fine, renormalised to unit std: natural-looking mottling."""
    out = np.zeros((h, w), np.float32)
    for k, cell in enumerate(cells):
        out += (persistence**k) * _noise(rng, h, w, cell)
    return out / (out.std() + 1e-6)


def _smooth1d(rng: np.random.Generator, n: int, sigma: float) -> Array:
    """Unit-std correlated 1-D noise (``sigma`` in samples): wiggles of a path or its width."""
    x = ndimage.gaussian_filter1d(rng.standard_normal(n), max(sigma, 0.3), mode="reflect")
    return x / (x.std() + 1e-9)


def _grid(h: int, w: int, y0: int = 0, x0: int = 0) -> tuple[Array, Array]:
    """Broadcastable pixel coordinates (a column and a row): full coordinate planes cost 2x more."""
    return np.arange(y0, y0 + h, dtype=np.float32)[:, None], np.arange(x0, x0 + w, dtype=np.float32)[None, :]


def _ramp(rng: np.random.Generator, h: int, w: int) -> Array:
    """A linear ramp in [-0.5, 0.5] along a random direction: uneven lighting across the photo."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(h, w)
    r = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    return (r / (np.abs(r).max() + 1e-6) * 0.5).astype(np.float32)


def _radial(rng: np.random.Generator, h: int, w: int) -> Array:
    """Squared distance from a jittered centre, about 1 at the corners: lens vignetting."""
    cy, cx = h / 2 + rng.normal(0, h / 8), w / 2 + rng.normal(0, w / 8)
    yy, xx = _grid(h, w)
    return (((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2).astype(np.float32) * 2.0


def _smoothstep(x: Array, lo: float, hi: float) -> Array:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------
# Strokes: soft union-of-discs rendering through one Euclidean distance transform
# --------------------------------------------------------------------------------------------


_RING = np.ones((3, 3), bool)


def _tidy_alpha(alpha: Array) -> Array:
    """Zero any opacity that is not in, or right next to, the mask (``alpha >= 0.5``).

    Soft edges are kept as a one-pixel anti-aliasing rim; faint specks elsewhere (a noise crest
    just under the threshold, a stroke grazing between pixel centres) would change the picture
    where the mask says nothing happened, so they are not painted at all.
    """
    near = ndimage.binary_dilation(alpha >= 0.5, structure=_RING)
    return np.where(near, alpha, 0.0).astype(np.float32)


def _render_discs(x: Array, y: Array, r: Array, h: int, w: int, edge: float = 1.0, min_radius: float = 0.75) -> Array:
    """Opacity of the union of discs ``(x, y, r)`` with a soft rim ``edge`` px wide.

    Paths are sampled densely (0.5 px), so a union of discs is a stroke of varying width. The
    distance transform finds each pixel's nearest centre in one vectorised pass, and measuring the
    distance to that centre's sub-pixel position keeps 1-px strokes smooth rather than stair-stepped.

    Discs thinner than ``min_radius`` are widened to it (radius 0 means "no disc": callers end
    their strokes that way). A thinner stroke running between pixel centres would paint two rows at
    ``alpha`` just under 0.5: clearly visible, yet outside its mask (``alpha >= 0.5``). A disc of
    radius 0.75 always holds a pixel centre (the lattice's covering radius is 0.71), so every stroke
    reaches the mask and the pixels changed outside it form at most a one-pixel anti-aliasing rim.
    At small image sizes thin defects thus stay visible (and labelled) instead of fading out.
    """
    alpha = np.zeros((h, w), np.float32)
    if len(x) == 0:
        return alpha
    x, y, r = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(r, np.float64)
    r = np.where(r > 0, np.maximum(r, min_radius), 0.0)
    pad = int(np.ceil(r.max() + edge)) + 2
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    keep = (ix >= -pad) & (ix < w + pad) & (iy >= -pad) & (iy < h + pad) & (r > 0)
    if not keep.any():
        return alpha
    x, y, r, ix, iy = x[keep], y[keep], r[keep], ix[keep], iy[keep]
    # work only on the strokes' bounding box (clipped to the image plus a margin)
    x0, x1 = max(int(ix.min()) - pad, -pad), min(int(ix.max()) + pad, w - 1 + pad)
    y0, y1 = max(int(iy.min()) - pad, -pad), min(int(iy.max()) + pad, h - 1 + pad)
    ch, cw = y1 - y0 + 1, x1 - x0 + 1
    order = np.argsort(r, kind="stable")  # where centres share a pixel the widest one wins
    sy, sx = iy[order] - y0, ix[order] - x0
    seed_r = np.zeros((ch, cw), np.float64)
    seed_x = np.zeros((ch, cw), np.float64)
    seed_y = np.zeros((ch, cw), np.float64)
    seed_r[sy, sx], seed_x[sy, sx], seed_y[sy, sx] = r[order], x[order], y[order]
    empty = np.ones((ch, cw), bool)
    empty[sy, sx] = False
    ny, nx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
    yy = np.arange(y0, y1 + 1, dtype=np.float64)[:, None]
    xx = np.arange(x0, x1 + 1, dtype=np.float64)[None, :]
    d = np.hypot(yy - seed_y[ny, nx], xx - seed_x[ny, nx])
    a = np.clip((seed_r[ny, nx] - d) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    # paste the part of the box that lies inside the image (tidied after cropping: mask pixels
    # beyond the border do not count)
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y1, h - 1), min(x1, w - 1)
    alpha[iy0 : iy1 + 1, ix0 : ix1 + 1] = _tidy_alpha(a[iy0 - y0 : iy1 - y0 + 1, ix0 - x0 : ix1 - x0 + 1])
    return alpha


def _walk(
    rng: np.random.Generator, x0: float, y0: float, theta0: float, length: float, scale: float
) -> tuple[Array, Array, Array]:
    """A crack-like random path: a slow wander, a jagged mid-scale zig-zag and fine roughness.

    The heading is a sum of correlated noises rather than a simple random walk, so the path keeps
    a general direction (cracks run across a member) while being rough at every scale.
    """
    step = 0.5
    n = max(4, int(length / step))
    px = 1.0 / step  # samples per pixel
    # kinks: the heading jumps at random points a few pixels apart (cracks follow grain boundaries
    # and aggregate edges, so they zig-zag rather than meander smoothly)
    seg = rng.exponential(rng.uniform(4, 9) * scale * px, size=n // 2 + 2).clip(2 * px, None)
    jumps = rng.normal(0, rng.uniform(0.35, 0.6), size=len(seg) + 1)
    kinks = ndimage.gaussian_filter1d(jumps[np.searchsorted(np.cumsum(seg), np.arange(n))], 0.6 * scale * px)
    theta = (
        theta0
        + rng.uniform(0.1, 0.35) * _smooth1d(rng, n, 30 * scale * px)
        + kinks
        + 0.2 * _smooth1d(rng, n, 0.7 * scale * px)
    )
    x = x0 + np.concatenate([[0.0], np.cumsum(np.cos(theta[:-1]))]) * step
    y = y0 + np.concatenate([[0.0], np.cumsum(np.sin(theta[:-1]))]) * step
    return x, y, theta


def _crack_strokes(
    rng: np.random.Generator,
    x0: float,
    y0: float,
    theta0: float,
    length: float,
    rmax: float,
    scale: float,
    depth: int,
    tapered_start: bool,
    out: list[tuple[Array, Array, Array]],
) -> None:
    """One crack branch plus, recursively, thinner side branches that taper to a tip."""
    x, y, theta = _walk(rng, x0, y0, theta0, length, scale)
    n = len(x)
    t = np.linspace(0.0, 1.0, n)
    a = rng.uniform(0.1, 0.35) if tapered_start else 1e-3
    b = rng.uniform(0.15, 0.45)
    taper = np.minimum(1.0, np.minimum(t / a, (1.0 - t) / b)) ** 0.7
    wobble = np.clip(1.0 + 0.25 * _smooth1d(rng, n, 12 * scale * 2), 0.5, 1.6)
    r = rmax * taper * wobble
    r[taper * wobble < 0.2] = 0.0  # the tip ends where it would be a fifth of the branch's width
    out.append((x, y, r))
    if depth >= 2:
        return
    for _ in range(int(rng.poisson(1.3 if depth == 0 else 0.5))):
        k = int(rng.integers(int(0.1 * n), max(int(0.1 * n) + 1, int(0.85 * n))))
        if r[k] < 0.45 * scale:
            continue
        side = rng.choice((-1.0, 1.0))
        _crack_strokes(
            rng,
            float(x[k]),
            float(y[k]),
            float(theta[k] + side * rng.uniform(0.35, 1.1)),
            length * rng.uniform(0.2, 0.55),
            float(r[k]) * rng.uniform(0.45, 0.8),
            scale,
            depth + 1,
            False,
            out,
        )


def crack_alpha(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    scale: float = 1.0,
    length: tuple[float, float] = (0.7, 1.4),
    width_px: tuple[float, float] = (2.0, 6.0),
    n_cracks: int | None = None,
) -> Array:
    """Opacity map of branching, tapering cracks -- the one crack model both stages share.

    ``scale`` is pixels per pixel-at-227 (the Kaggle crop size), so widths and wiggles keep their
    look at any resolution; ``length`` is the main crack's length as a fraction of the image side,
    ``width_px`` its widest point at scale 1. Starting points lie near the border half the time,
    because in cropped photos cracks usually enter from outside.
    """
    side = max(height, width)
    count = n_cracks if n_cracks is not None else (1 if rng.random() < 0.8 else 2)
    strokes: list[tuple[Array, Array, Array]] = []
    for _ in range(count):
        if rng.random() < 0.5:  # enter from an edge, heading inwards
            edge_pos = rng.uniform(0, 1)
            side_i = int(rng.integers(4))
            x0, y0 = [
                (edge_pos * width, 0.0),
                (edge_pos * width, height - 1.0),
                (0.0, edge_pos * height),
                (width - 1.0, edge_pos * height),
            ][side_i]
            tapered = False
        else:
            x0, y0 = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
            tapered = True
        tx, ty = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        theta = np.arctan2(ty - y0, tx - x0) + rng.normal(0, 0.35)
        if tapered and rng.random() < 0.5:
            theta += np.pi  # grow from an interior point either way
        rmax = rng.uniform(*width_px) / 2.0 * scale
        _crack_strokes(rng, x0, y0, theta, rng.uniform(*length) * side, rmax, scale, 0, tapered, strokes)
    x = np.concatenate([s[0] for s in strokes])
    y = np.concatenate([s[1] for s in strokes])
    r = np.concatenate([s[2] for s in strokes])
    return _render_discs(x, y, r, height, width, edge=max(0.6, 0.9 * scale))


def _line_points(
    x0: float, y0: float, theta: float, length: float, curvature: float = 0.0
) -> tuple[Array, Array, Array]:
    """Points every 0.5 px along a straight line or constant-curvature arc, and the arc parameter."""
    s = np.arange(0.0, length, 0.5)
    th = theta + curvature * s
    x = x0 + np.concatenate([[0.0], np.cumsum(np.cos(th[:-1]))]) * 0.5
    y = y0 + np.concatenate([[0.0], np.cumsum(np.sin(th[:-1]))]) * 0.5
    return x, y, s / max(length, 1e-6)


def _chord_across(rng: np.random.Generator, h: int, w: int) -> tuple[float, float, float, float]:
    """A straight line crossing the whole image: start point, angle, length."""
    theta = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    half = float(np.hypot(h, w))
    return cx - half * np.cos(theta), cy - half * np.sin(theta), theta, 2 * half


# --------------------------------------------------------------------------------------------
# Stage 1: concrete, crack / no crack
# --------------------------------------------------------------------------------------------


def _concrete_image(rng: np.random.Generator, size: int, crack: bool) -> tuple[Array, Array]:
    """A 227-px-style concrete crop and its crack opacity (zeros without a crack); clutter is drawn identically for both classes (see module doc)."""
    s, sc = size, size / 227.0
    a = np.zeros((s, s), np.float32)
    base = rng.uniform(0.48, 0.8)
    g = base * (
        1.0
        + rng.uniform(0.03, 0.08) * _fractal(rng, s, s, [c * sc for c in (110, 55, 28)], 0.7)  # mottling
        + rng.uniform(0.03, 0.06) * _noise(rng, s, s, 2.2 * sc)  # sand grain
        + rng.uniform(0.02, 0.05) * _noise(rng, s, s, 0.8)  # fine grain
    )
    # aggregate: sparse light and dark speckles the size of sand grains and small stones
    speck = (rng.random((s, s)) < rng.uniform(0.004, 0.02)) * rng.normal(0, 1, (s, s))
    speck = ndimage.gaussian_filter(speck.astype(np.float32), 0.8 * sc)
    g *= 1.0 + rng.uniform(0.4, 1.0) * speck / (np.abs(speck).max() + 1e-6) * 0.35
    # stains: darker (damp, dirt) or lighter (efflorescence) blotches; sometimes strong -> hard negative
    if rng.random() < 0.55:
        st = _smoothstep(
            _fractal(rng, s, s, [c * sc for c in (60, 30, 12)], 0.55),
            t := rng.uniform(0.4, 1.4),
            t + rng.uniform(0.3, 1.0),
        )
        strength = rng.uniform(0.25, 0.45) if rng.random() < 0.4 else rng.uniform(0.05, 0.2)
        g *= 1.0 - (strength if rng.random() < 0.8 else -0.5 * strength) * st
    # pores / bug holes: small dark round holes, sometimes many, sometimes big -> hard negative
    n_pores = int(rng.poisson(rng.choice([2.0, 8.0, 30.0]) * (s / 227.0) ** 2))
    if n_pores:
        big = rng.random() < 0.25
        rad = (rng.uniform(1.5, 4.0, n_pores) if big else 0.4 + rng.exponential(0.6, n_pores)).clip(0.4, 4.5) * sc
        pores = _render_discs(
            rng.uniform(0, s, n_pores), rng.uniform(0, s, n_pores), rad, s, s, edge=1.2 * max(sc, 0.7)
        )
        depth = rng.uniform(0.25, 0.55) * (1.0 + 0.4 * _noise(rng, s, s, 3.0 * sc)).clip(0.3, 1.6)  # pore to pore
        g *= 1.0 - depth * pores
    # formwork lines and joints: long, straight, even -- dark but not crack-shaped -> hard negative
    if rng.random() < 0.3:
        x0, y0, theta, length = _chord_across(rng, s, s)
        if rng.random() < 0.5:  # a thin straight line (board joint, scribe)
            x, y, _ = _line_points(x0, y0, theta, length)
            line = _render_discs(x, y, np.full(len(x), rng.uniform(0.5, 1.6) * sc), s, s, edge=max(0.7, sc))
            g *= 1.0 - rng.uniform(0.2, 0.45) * line
        else:  # a step between two pours or boards: a straight brightness edge
            yy, xx = _grid(s, s)
            signed = (xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta)
            g *= 1.0 + rng.uniform(-0.12, 0.12) * np.clip(signed / (1.5 * sc) + 0.5, 0, 1)
    if crack:
        for _ in range(4):  # a crack that only grazes a corner would be a label error, not a hard case
            a = crack_alpha(rng, s, s, scale=sc)
            if np.count_nonzero(a >= 0.5) >= 0.4 * s * max(sc, 0.5):
                break
        depth = rng.uniform(0.55, 0.85) * (0.9 + 0.1 * _noise(rng, s, s, 3 * sc)).clip(0.6, 1.1)
        g *= 1.0 - depth * a
    # camera: uneven light, vignetting, slight defocus
    g *= 1.0 + rng.uniform(0.0, 0.3) * _ramp(rng, s, s)
    g *= 1.0 - rng.uniform(0.0, 0.25) * _radial(rng, s, s)
    g = ndimage.gaussian_filter(g, rng.uniform(0.3, 0.7) * max(sc, 0.5))
    warm = rng.normal(0, 0.025)
    tint = 1.0 + np.array([warm, 0.2 * warm, -warm]) + rng.normal(0, 0.012, 3)
    rgb = g[..., None] * tint[None, None, :].astype(np.float32)
    rgb += rng.normal(0, rng.uniform(0.004, 0.015), (s, s, 1)).astype(np.float32)
    return _to_uint8(rgb), a


# --------------------------------------------------------------------------------------------
# Stage 2: steel surfaces and defects
# --------------------------------------------------------------------------------------------

_PAINTS = np.array(
    [
        [0.55, 0.56, 0.57],  # grey
        [0.42, 0.44, 0.46],  # dark grey
        [0.22, 0.40, 0.28],  # green
        [0.20, 0.32, 0.52],  # blue
        [0.50, 0.20, 0.14],  # red-oxide primer
        [0.75, 0.62, 0.20],  # safety yellow
    ],
    np.float32,
)


def _steel_background(rng: np.random.Generator, s: int, kind: str) -> Array:
    sc = s / 256.0
    if kind == "brushed":
        base = rng.uniform(0.45, 0.78)
        g = base * (
            1.0
            + rng.uniform(0.03, 0.07) * _aniso_noise(rng, s, s, 1.0, rng.uniform(25, 70) * sc)  # long streaks
            + rng.uniform(0.02, 0.04) * _aniso_noise(rng, s, s, 1.0, 5 * sc)  # short scratches of the brush
            + rng.uniform(0.05, 0.14) * _aniso_noise(rng, s, s, rng.uniform(40, 90) * sc, 4 * s)  # sheen bands
        )
        if rng.random() < 0.5:
            g = g.T
        tint = np.array([0.98, 1.0, 1.03], np.float32) + rng.normal(0, 0.01, 3).astype(np.float32)
        return g[..., None] * tint
    if kind == "painted":
        colour = _PAINTS[rng.integers(len(_PAINTS))] * (1.0 + rng.normal(0, 0.06, 3)).astype(np.float32)
        g = (
            1.0
            + rng.uniform(0.015, 0.035) * _noise(rng, s, s, rng.uniform(2.5, 5.0) * sc)  # orange peel
            + 0.01 * _noise(rng, s, s, 0.8)
            + rng.uniform(0.02, 0.06) * _fractal(rng, s, s, [c * sc for c in (120, 60)], 0.6)  # uneven coat
        )
        rgb = g[..., None] * colour
        if rng.random() < 0.35:  # grime, not a defect
            dirt = _smoothstep(_fractal(rng, s, s, [c * sc for c in (70, 35, 15)]), t := rng.uniform(0.5, 1.5), t + 1.0)
            rgb *= (1.0 - rng.uniform(0.08, 0.2) * dirt)[..., None]
        return rgb
    # rusty: weathered steel under uneven surface rust; the corrosion *defects* are heavier and darker
    cover = _smoothstep(
        _fractal(rng, s, s, [c * sc for c in (80, 40, 20, 10)], 0.6), rng.uniform(-1.5, -0.3), rng.uniform(1.0, 2.5)
    )
    tone = _smoothstep(_fractal(rng, s, s, [c * sc for c in (30, 12, 5)], 0.7), -1.5, 1.5)
    steel = np.array([0.50, 0.48, 0.46], np.float32) * rng.uniform(0.8, 1.1)
    rust_a = np.array([0.56, 0.40, 0.28], np.float32) * rng.uniform(0.85, 1.1)  # light brown film
    rust_b = np.array([0.62, 0.36, 0.18], np.float32) * rng.uniform(0.85, 1.1)  # orange streaks
    rust = rust_a * (1 - tone[..., None]) + rust_b * tone[..., None]
    grain = 1.0 + 0.05 * _noise(rng, s, s, 1.5 * sc) + 0.04 * _noise(rng, s, s, 0.8)
    return (steel * (1 - cover[..., None]) + rust * cover[..., None]) * grain[..., None]


def _weld_seam(rng: np.random.Generator, rgb: Array) -> None:
    """A weld bead: a bright, rippled, straight band with a heat tint beside it (not a defect)."""
    s = rgb.shape[0]
    sc = s / 256.0
    theta = rng.integers(0, 2) * np.pi / 2 + rng.normal(0, 0.08)
    cx, cy = rng.uniform(0.15, 0.85) * s, rng.uniform(0.15, 0.85) * s
    yy, xx = _grid(s, s)
    u = (xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta)  # across the seam
    v = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # along it
    hw = rng.uniform(7, 13) * sc
    bead = np.clip(1.0 - (u / hw) ** 2, 0, 1)
    period = rng.uniform(3, 6) * sc
    ripple = 0.5 + 0.5 * np.sin(2 * np.pi * (v - 0.6 * hw * (u / hw) ** 2) / period)
    shade = 0.45 + 0.35 * np.sqrt(bead) * (0.7 + 0.3 * ripple) + 0.15 * (u / hw).clip(-1, 1)
    weld = (shade * (1 + 0.05 * _noise(rng, s, s, 1.5 * sc)))[..., None] * np.array([0.95, 0.95, 0.97], np.float32)
    heat = np.exp(-(((np.abs(u) - hw) / (hw * 0.9)).clip(0, None) ** 2))[..., None] * (np.abs(u) >= hw)[..., None]
    rgb *= 1.0 - 0.25 * heat * np.array([0.1, 0.4, 0.8], np.float32)  # bluish-straw temper colours
    a = np.clip((hw - np.abs(u)) / 1.0 + 0.5, 0, 1)[..., None]
    rgb[:] = rgb * (1 - a) + weld * a


def _bolts(rng: np.random.Generator, rgb: Array) -> None:
    """A row of round bolt heads / rivets with a dome shading and a drop shadow (not defects)."""
    s = rgb.shape[0]
    sc = s / 256.0
    n = int(rng.integers(1, 5))
    R = rng.uniform(6, 14) * sc
    gap = rng.uniform(2.6, 4.5) * R
    theta = rng.integers(0, 2) * np.pi / 2 + rng.normal(0, 0.05)
    x0, y0 = rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.9) * s
    light = np.array([rng.normal(-0.5, 0.3), rng.normal(-0.5, 0.3), 1.0])
    light /= np.linalg.norm(light)
    colour = rgb[int(np.clip(y0, 0, s - 1)), int(np.clip(x0, 0, s - 1))] * rng.uniform(0.9, 1.15)
    yy, xx = _grid(s, s)
    for k in range(n):
        cx, cy = x0 + k * gap * np.cos(theta), y0 + k * gap * np.sin(theta)
        dx, dy = xx - cx, yy - cy
        d = np.hypot(dx, dy)
        shadow = np.clip(
            (R + 1.5 * sc - np.hypot(dx + light[0] * 0.35 * R, dy + light[1] * 0.35 * R)) / (2.5 * sc), 0, 1
        )
        rgb *= (1.0 - 0.35 * shadow)[..., None]
        nz = np.sqrt(np.clip(1 - (d / R) ** 2, 0, 1))
        lambert = np.clip((dx / R) * light[0] + (dy / R) * light[1] + nz * light[2], 0, 1)
        head = colour * (0.45 + 0.75 * lambert)[..., None]
        a = np.clip((R - d) / 1.0 + 0.5, 0, 1)[..., None]
        rgb[:] = rgb * (1 - a) + head * a


def _corrosion(rng: np.random.Generator, rgb: Array) -> Array:
    """An irregular rust patch with a rough, ragged edge and flaky texture; returns its opacity."""
    s = rgb.shape[0]
    sc = s / 256.0
    R = rng.uniform(0.06, 0.17) * s
    cx, cy = rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.9) * s
    half = int(R * 2.0) + 4
    y0, y1 = max(0, int(cy) - half), min(s, int(cy) + half)
    x0, x1 = max(0, int(cx) - half), min(s, int(cx) + half)
    alpha = np.zeros((s, s), np.float32)
    h, w = y1 - y0, x1 - x0
    if h < 2 or w < 2:
        return alpha
    yy, xx = _grid(h, w, y0, x0)
    ax = rng.uniform(0.6, 1.0)  # elongation
    ang = rng.uniform(0, np.pi)
    du, dv = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang), -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    dist = np.hypot(du, dv / ax)
    field = (
        R
        * (
            1.0
            + 0.3 * _noise(rng, h, w, R * 0.6)
            + 0.12 * _noise(rng, h, w, 5 * sc)
            + 0.06 * _noise(rng, h, w, 1.8 * sc)
        )
        - dist
    )
    # divide by the gradient to get a signed distance in pixels: the soft rim is then ~1 px wide
    # everywhere, where the raw noisy field would leave wide sub-threshold fringes outside the mask
    gy, gx = np.gradient(field)
    a = _tidy_alpha(np.clip(field / (np.hypot(gy, gx) + 0.05) / (0.9 * max(sc, 0.7)) + 0.5, 0, 1))
    tex = _fractal(rng, h, w, [R * 0.4, 8 * sc, 3 * sc, 1.5 * sc], 0.7)
    dark = np.array([0.28, 0.13, 0.07], np.float32) * rng.uniform(0.8, 1.15)
    orange = np.array([0.70, 0.36, 0.12], np.float32) * rng.uniform(0.85, 1.1)
    t = _smoothstep(tex, -1.0, 1.0)[..., None]
    rust = dark * (1 - t) + orange * t
    flakes = (tex > 1.6)[..., None]  # crusty lighter flakes
    rust = np.where(flakes, rust * 1.25, rust) * (1 + 0.08 * _noise(rng, h, w, 0.8))[..., None]
    region = rgb[y0:y1, x0:x1]
    region[:] = region * (1 - a[..., None]) + rust * a[..., None]
    alpha[y0:y1, x0:x1] = a
    return alpha


def _pits(rng: np.random.Generator, rgb: Array) -> Array:
    """A cluster of small, dark, round pits (pitting corrosion)."""
    s = rgb.shape[0]
    sc = s / 256.0
    n = int(rng.integers(10, 60))
    spread = rng.uniform(6, 22) * sc
    cx, cy = rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.9) * s
    x, y = cx + rng.normal(0, spread, n), cy + rng.normal(0, spread, n)
    r = (0.8 + rng.gamma(2.0, 0.5, n)).clip(0.8, 4.0) * sc
    a = _render_discs(x, y, r, s, s, edge=0.8 * max(sc, 0.7))
    inner = np.array([0.35, 0.22, 0.15], np.float32)  # rust-brown bottoms
    depth = rng.uniform(0.55, 0.8)
    rgb[:] = rgb * (1 - depth * a[..., None]) + inner * (0.25 * depth * a[..., None])
    return a


def _scratch(rng: np.random.Generator, rgb: Array) -> Array:
    """One to four parallel, thin, near-straight bright or dark scratches."""
    s = rgb.shape[0]
    sc = s / 256.0
    theta = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 0.85) * s
    curvature = rng.normal(0, 1.0 / (2.0 * s))
    cx, cy = rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * s
    n_lines = 1 if rng.random() < 0.5 else int(rng.integers(2, 6))
    xs, ys, rs = [], [], []
    for k in range(n_lines):
        off = k * rng.uniform(2.5, 6.0) * sc
        lk = length * rng.uniform(0.6, 1.0)
        x0 = cx - lk / 2 * np.cos(theta) - off * np.sin(theta)
        y0 = cy - lk / 2 * np.sin(theta) + off * np.cos(theta)
        x, y, t = _line_points(x0, y0, theta, lk, curvature)
        rmax = rng.uniform(0.5, 1.3) * sc
        taper = np.minimum(1.0, np.minimum(t, 1 - t) / 0.15) ** 0.5
        r = np.where(taper < 0.3, 0.0, rmax * taper)
        xs.append(x), ys.append(y), rs.append(r)
    a = _render_discs(np.concatenate(xs), np.concatenate(ys), np.concatenate(rs), s, s, edge=0.7 * max(sc, 0.7))
    if rng.random() < 0.55:  # bright: bare metal showing through
        rgb[:] = rgb + (0.95 - rgb) * (rng.uniform(0.45, 0.75) * a)[..., None]
    else:
        rgb[:] = rgb * (1 - rng.uniform(0.35, 0.55) * a)[..., None]
    return a


def _steel_crack(rng: np.random.Generator, rgb: Array) -> Array:
    """The stage-1 crack model, shorter, on metal: dark, with a slightly rusty bottom."""
    s = rgb.shape[0]
    for _ in range(4):  # skip cracks that would barely enter the image
        a = crack_alpha(rng, s, s, scale=s / 256.0, length=(0.3, 0.9), n_cracks=1)
        if np.count_nonzero(a >= 0.5) >= 0.25 * s:
            break
    depth = rng.uniform(0.55, 0.85)
    rgb[:] = rgb * (1 - depth * a[..., None]) + np.array([0.10, 0.06, 0.04], np.float32) * (depth * a[..., None])
    return a


_PAINTERS: dict[str, Callable[[np.random.Generator, Array], Array]] = {
    "crack": _steel_crack,
    "corrosion": _corrosion,
    "pits": _pits,
    "scratch": _scratch,
}


def _look_alikes(rng: np.random.Generator, rgb: Array) -> None:
    """Unlabelled marks that resemble defects, as on photos taken in the field (``conditions="field"``).

    Each echoes a defect or a stage-1 hard negative without being one: grime and water marks
    (dark blotches, like stains on concrete), run-off streaks (long and soft, not thin), inspectors'
    chalk and paint-marker strokes (smooth, even width, often coloured: not a jagged crack or a
    straight scratch), dust and weld spatter (grey dots, not the rust-brown bottoms of pits) and
    the straight shadow edge of a member. A model must learn what is *not* a defect.
    """
    s = rgb.shape[0]
    sc = s / 256.0
    for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))):
        kind = rng.choice(("stain", "streaks", "marker", "specks", "shadow"), p=[0.25, 0.2, 0.25, 0.15, 0.15])
        if kind == "stain":
            blot = _smoothstep(
                _fractal(rng, s, s, [c * sc for c in (60, 30, 12)], 0.6),
                t := rng.uniform(0.6, 1.6),
                t + rng.uniform(0.3, 1.0),
            )
            rgb *= (1.0 - rng.uniform(0.15, 0.45) * blot)[..., None]
        elif kind == "streaks":
            streaks = _smoothstep(_aniso_noise(rng, s, s, rng.uniform(40, 120) * sc, rng.uniform(2, 5) * sc), 1.0, 2.2)
            streaks = streaks * _smoothstep(_noise(rng, s, s, 80 * sc), -0.5, 0.8)
            if rng.random() < 0.5:
                streaks = streaks.T
            tint = np.array([0.55, 0.45, 0.38] if rng.random() < 0.5 else [0.3, 0.3, 0.3], np.float32)
            a = (rng.uniform(0.3, 0.6) * streaks)[..., None]
            rgb[:] = rgb * (1 - a) + tint * a
        elif kind == "marker":
            x0, y0 = rng.uniform(0.1, 0.9, 2) * s
            x, y, _ = _line_points(x0, y0, rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.7) * s, rng.normal(0, 2.0 / s))
            pick = int(rng.integers(3))  # white chalk (broad), yellow or black paint marker
            a = _render_discs(
                x,
                y,
                np.full(len(x), (rng.uniform(1.8, 3.0) if pick == 0 else rng.uniform(1.0, 2.0)) * sc),
                s,
                s,
                edge=1.2,
            )
            colour = np.array([[0.93, 0.93, 0.9], [0.95, 0.85, 0.2], [0.12, 0.12, 0.14]][pick], np.float32)
            a = (rng.uniform(0.5, 0.9) * a)[..., None]
            rgb[:] = rgb * (1 - a) + colour * a
        elif kind == "specks":
            k = int(rng.integers(10, 60))
            cx, cy = rng.uniform(0.1, 0.9, 2) * s
            spread = rng.uniform(10, 50) * sc
            x, y = cx + rng.normal(0, spread, k), cy + rng.normal(0, spread, k)
            a = 0.7 * _render_discs(x, y, (0.7 + rng.gamma(2.0, 0.4, k)).clip(0.7, 3.0) * sc, s, s, edge=0.8)[..., None]
            rgb[:] = rgb * (1 - a) + rng.uniform(0.2, 0.7) * a
        else:
            x0, y0, theta, _ = _chord_across(rng, s, s)
            yy, xx = _grid(s, s)
            signed = (xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta)
            rgb *= (1.0 - rng.uniform(0.2, 0.45) * np.clip(signed / (rng.uniform(1, 4) * sc) + 0.5, 0, 1))[..., None]


def _steel_sample(
    seed: int, index: int, size: int, defects: bool = True, conditions: str = "clean", defect_set: str = "mixed"
) -> tuple[Array, Array, list[str]]:
    """Image ``index`` of the steel set: (RGB uint8, mask bool, defect kinds).

    Background, defects and camera draw from separate streams, so ``defects=False`` renders the
    very same photo without its defects -- the reference for checking that masks are exact.
    ``conditions="clean"`` is the studio-like default; ``"field"`` adds what field photos have
    (see :data:`CONDITIONS`) from a fourth stream, so the clean photo's background, defects and
    camera stay the same draws. ``defect_set``: one of :data:`DEFECT_SETS`.
    """
    _check_conditions(conditions)
    _check_defect_set(defect_set)
    field = conditions == "field"
    bg_rng, defect_rng, cam_rng, field_rng = (
        np.random.default_rng(ss) for ss in np.random.SeedSequence([seed, _STAGE_SEG, index]).spawn(4)
    )
    s = size
    kind = _STEEL_KINDS[int(bg_rng.choice(3, p=[0.35, 0.4, 0.25]))]
    rgb = _steel_background(bg_rng, s, kind).astype(np.float32)
    if bg_rng.random() < 0.2:
        _weld_seam(bg_rng, rgb)
    if bg_rng.random() < 0.2:
        _bolts(bg_rng, rgb)
    if field:
        _look_alikes(field_rng, rgb)
    mask = np.zeros((s, s), bool)
    kinds: list[str] = []
    n_defects = (
        0 if defect_rng.random() < _EMPTY_FRACTION else int(defect_rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    )
    for _ in range(n_defects):
        name = _DEFECT_KINDS[
            int(defect_rng.choice(4, p=[0.35, 0.25, 0.2, 0.2]))
        ]  # drawn either way: streams stay aligned
        if defect_set != "mixed":
            name = defect_set
        sub = np.random.default_rng(defect_rng.integers(2**63))  # one stream per defect, same either way
        severity = field_rng.uniform(*_FIELD_SEVERITY) if field else 1.0  # drawn either way: streams stay aligned
        if not defects:
            continue
        before = rgb.copy() if severity < 1.0 else None
        hit = _PAINTERS[name](sub, rgb) >= 0.5
        if before is not None:  # a faint defect: only part of the way from the bare surface to the painted one
            rgb[:] = before + severity * (rgb - before)
        if hit.any():  # a defect drawn off the image changes nothing and is not listed
            mask |= hit
            kinds.append(name)
    # camera: uneven light, vignetting, sensor noise -- identical with or without defects
    light = (1.0 + cam_rng.uniform(0.05, 0.4) * _ramp(cam_rng, s, s)) * (
        1.0 - cam_rng.uniform(0.0, 0.3) * _radial(cam_rng, s, s)
    )
    exposure = field_rng.uniform(0.6, 1.1) if field else 1.0  # overcast days, shaded girders
    rgb *= light[..., None] * (cam_rng.uniform(0.85, 1.15) * exposure)
    noise_gain = field_rng.uniform(1.0, 2.5) if field else 1.0  # higher ISO in poor light
    rgb += cam_rng.normal(0, cam_rng.uniform(0.005, 0.02), (s, s, 3)).astype(np.float32) * noise_gain
    return _to_uint8(rgb), mask, kinds


def _concrete_sample(seed: int, label: int, index: int, size: int) -> tuple[Array, Array]:
    """Photo and crack mask (bool) of one stage-1 image: the classification set and the crack-mask set share the photos."""
    image, alpha = _concrete_image(np.random.default_rng([seed, _STAGE_CLS, label, index]), size, crack=bool(label))
    return image, alpha >= 0.5


def _to_uint8(x: Array) -> Array:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing sets, manifests, idempotent + atomic ensure_*
# --------------------------------------------------------------------------------------------


def _save_png(array: Array, path: Path) -> None:
    Image.fromarray(array).save(
        path, format="PNG", compress_level=1
    )  # noisy pictures barely compress; level 1 is 5x faster than 6


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional
            pass
        else:
            return tqdm(total=total, desc=desc, unit="img", leave=False)
    return contextlib.nullcontext(_NoBar())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


_PARALLEL_FROM = 256  # below this many images, starting worker processes costs more than it saves


def _resolve_workers(workers: int | None, jobs: int) -> int:
    """None/1: this process. 0: one process per CPU for sets of 256+ images. n: n processes."""
    if workers is None or int(workers) == 1:
        return 1
    if int(workers) > 1:
        return int(workers)
    if jobs < _PARALLEL_FROM:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))  # respects container / taskset limits
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _write_concrete(root: str, seed: int, label: int, index: int, size: int) -> None:
    _save_png(_concrete_sample(seed, label, index, size)[0], Path(root) / CLASS_DIRS[1 - label] / f"{index:05d}.png")


def _write_concrete_masked(root: str, seed: int, label: int, index: int, size: int) -> None:
    """Crack photo ``index`` as file ``2 * index``, its no-crack twin as ``2 * index + 1``: a larger set extends a smaller one."""
    image, mask = _concrete_sample(seed, label, index, size)
    name = f"{2 * index + (1 - label):05d}.png"
    _save_png(image, Path(root) / "images" / name)
    _save_png(mask.astype(np.uint8) * 255, Path(root) / "masks" / name)


def _write_steel(root: str, seed: int, index: int, size: int, conditions: str, defect_set: str) -> None:
    image, mask, _ = _steel_sample(seed, index, size, conditions=conditions, defect_set=defect_set)
    _save_png(image, Path(root) / "images" / f"{index:05d}.png")
    _save_png(mask.astype(np.uint8) * 255, Path(root) / "masks" / f"{index:05d}.png")


def _star(job: tuple[Callable[..., None], tuple[Any, ...]]) -> None:
    job[0](*job[1])


def _run_jobs(
    fn: Callable[..., None], jobs: list[tuple[Any, ...]], desc: str, progress: bool, workers: int | None
) -> None:
    """Run the per-image jobs here or in worker processes (every image has its own seed, so the
    files are identical either way). Workers are opt-in: they are started with 'spawn' (the caller
    may hold torch / data-loader threads a forked child must not inherit), and 'spawn' re-imports
    the caller's main script, which must then guard its code with ``if __name__ == "__main__":``."""
    n_workers = _resolve_workers(workers, len(jobs))
    with _progress(len(jobs), desc, progress) as bar:
        if n_workers == 1:
            for job in jobs:
                fn(*job)
                bar.update(1)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
            chunk = max(1, min(32, len(jobs) // (4 * n_workers)))
            for _ in pool.map(_star, [(fn, job) for job in jobs], chunksize=chunk):
                bar.update(1)


def _check_params(n: int, size: int, seed: int, what: str) -> None:
    if int(n) < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")
    if int(size) < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _check_conditions(conditions: str) -> None:
    if conditions not in CONDITIONS:
        raise ValueError(f"conditions must be one of {', '.join(CONDITIONS)}, got {conditions!r}")


def _check_defect_set(defect_set: str) -> None:
    if defect_set not in DEFECT_SETS:
        raise ValueError(f"defect_set must be one of {', '.join(DEFECT_SETS)}, got {defect_set!r}")


def _start_writing(root: Path, subdirs: Iterable[str]) -> None:
    """Drop the manifest first: from here until the new one is written the folder is not 'complete'."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in subdirs:
        (root / sub).mkdir(exist_ok=True)


def _remove_stale(folder: Path, keep: int) -> None:
    """Remove generated files numbered ``keep`` or above, left by an earlier, larger set."""
    for p in folder.iterdir():
        if _FILE_RE.match(p.name) and int(p.stem) >= keep:
            p.unlink()


def _write_manifest(root: Path, generator: str, params: dict[str, Any], count: int) -> None:
    data = {"generator": generator, "version": VERSION, "params": params, "count": count}
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The ``GENERATED.json`` of a generated set, or None for a folder that is not one (or is partial)."""
    try:
        data = json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def generate_crack_classification(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the stage-1 set: ``root/Positive/*.png`` (crack) and ``root/Negative/*.png``, then the manifest.

    Writes in place; use :func:`ensure_crack_classification` for the idempotent, crash-safe version.
    ``workers``: None or 1 generate in this process; n > 1 uses n worker processes, 0 one per CPU
    for sets of 256+ images (from a script, only under ``if __name__ == "__main__":``). The files
    are the same either way.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    root, n, size, seed = Path(root).expanduser(), int(n_per_class), int(size), int(seed)
    log.debug("writing %d crack / %d no-crack images of %d px into %s", n, n, size, root)
    _start_writing(root, CLASS_DIRS)
    jobs = [(str(root), seed, label, i, size) for i in range(n) for label in (1, 0)]
    _run_jobs(_write_concrete, jobs, "crack set", progress, workers)
    for name in CLASS_DIRS:
        _remove_stale(root / name, n)
    _write_manifest(root, CRACK_CLASSIFICATION, {"n_per_class": n, "size": size, "seed": seed}, 2 * n)
    return root


def generate_steel_segmentation(
    root: str | Path,
    n_images: int = 175,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    conditions: str = "clean",
    defect_set: str = "mixed",
) -> Path:
    """Write the stage-2 set: ``root/images/*.png`` (RGB) and ``root/masks/*.png`` (L, 0/255), then the manifest.

    Writes in place; use :func:`ensure_steel_segmentation` for the idempotent, crash-safe version.
    ``workers`` as in :func:`generate_crack_classification`; ``conditions``: one of :data:`CONDITIONS`;
    ``defect_set``: one of :data:`DEFECT_SETS`.
    """
    _check_params(n_images, size, seed, "n_images")
    _check_conditions(conditions)
    _check_defect_set(defect_set)
    root, n, size, seed = Path(root).expanduser(), int(n_images), int(size), int(seed)
    log.debug(
        "writing %d steel images of %d px (%s conditions, %s defects) into %s", n, size, conditions, defect_set, root
    )
    _start_writing(root, ("images", "masks"))
    _run_jobs(
        _write_steel,
        [(str(root), seed, i, size, conditions, defect_set) for i in range(n)],
        "steel set",
        progress,
        workers,
    )
    for name in ("images", "masks"):
        _remove_stale(root / name, n)
    _write_manifest(
        root,
        STEEL_SEGMENTATION,
        {"n_images": n, "size": size, "seed": seed, "conditions": conditions, "defect_set": defect_set},
        n,
    )
    return root


def generate_crack_segmentation(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the stage-1 photos with crack masks (``pretrain_task=segmentation``): ``root/images/*.png`` + ``root/masks/*.png``.

    The photos are those of :func:`generate_crack_classification` with the same parameters, so the
    classification and segmentation objectives can be compared on identical images; a photo without
    a crack has an empty mask. ``workers`` as in :func:`generate_crack_classification`.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    root, n, size, seed = Path(root).expanduser(), int(n_per_class), int(size), int(seed)
    log.debug("writing %d crack / %d no-crack images with masks of %d px into %s", n, n, size, root)
    _start_writing(root, ("images", "masks"))
    jobs = [(str(root), seed, label, i, size) for i in range(n) for label in (1, 0)]
    _run_jobs(_write_concrete_masked, jobs, "crack mask set", progress, workers)
    for name in ("images", "masks"):
        _remove_stale(root / name, 2 * n)
    _write_manifest(root, CRACK_SEGMENTATION, {"n_per_class": n, "size": size, "seed": seed}, 2 * n)
    return root


def _count_files(root: Path, subdirs: Sequence[str]) -> int:
    try:
        return sum(1 for sub in subdirs for p in (root / sub).iterdir() if _FILE_RE.match(p.name))
    except OSError:
        return -1


def _is_complete(
    root: Path, generator: str, params: dict[str, Any], count: int, subdirs: Sequence[str], per_dir: int
) -> bool:
    data = read_manifest(root)
    return (
        data is not None
        and data.get("generator") == generator
        and data.get("version") == VERSION
        and data.get("params") == params
        and data.get("count") == count
        and _count_files(root, subdirs) == per_dir * len(subdirs)
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. no permission: it exists
        return True
    return True


@contextlib.contextmanager
def _scratch_dir(root: Path, tag: str) -> Iterator[Path]:
    """A hidden sibling of ``root`` (same file system, so rename is atomic), removed on exit."""
    tmp = root.parent / f".{root.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_orphans(root: Path) -> None:
    """Best effort: remove scratch siblings left by killed processes of this host."""
    pattern = re.compile(rf"^\.{re.escape(root.name)}\.(partial|old)-(\d+)-[0-9a-f]{{8}}$")
    with contextlib.suppress(OSError):
        for p in root.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_dir() and not _pid_alive(int(m.group(2))):
                shutil.rmtree(p, ignore_errors=True)


def _replaceable(root: Path, generator: str, subdirs: Sequence[str]) -> bool:
    """True for an empty folder, an older set of this generator, or a half-written one (only our files)."""
    if not root.is_dir():
        return False
    data = read_manifest(root)
    if data is not None and data.get("generator") == generator:
        return True
    for entry in root.iterdir():
        if entry.name == f".{MANIFEST_NAME}.tmp":
            continue
        if not (entry.is_dir() and entry.name in subdirs and all(_FILE_RE.match(p.name) for p in entry.iterdir())):
            return False
    return True


def _ensure(
    root: str | Path,
    generator: str,
    params: dict[str, Any],
    count: int,
    subdirs: Sequence[str],
    per_dir: int,
    make: Callable[[Path], Path],
    description: str,
) -> Path:
    root = Path(root).expanduser()
    if _is_complete(root, generator, params, count, subdirs, per_dir):
        return root
    if root.exists() and not _replaceable(root, generator, subdirs):
        # never delete what this module did not write: it may be someone's real data
        raise FileExistsError(
            f"{root}: exists and does not look like a generated {generator} set "
            f"(no matching {MANIFEST_NAME}, and it holds other files); choose another folder or remove it"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_orphans(root)
    log.info("generating synthetic %s set (%s) into %s", generator, description, root)
    with _scratch_dir(root, "partial") as tmp, _scratch_dir(root, "old") as old:
        make(tmp)
        if root.exists():
            if _is_complete(root, generator, params, count, subdirs, per_dir):
                return root  # a concurrent process finished first
            os.rename(root, old)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, generator, params, count, subdirs, per_dir):
                raise
    return root


def ensure_crack_classification(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the stage-1 set for these parameters; cheap when it already does.

    Generates into a hidden sibling folder and renames it into place, so an interrupted run never
    leaves a folder that looks complete. Refuses to replace a folder it did not generate.
    """
    _check_params(n_per_class, size, seed, "n_per_class")
    params = {"n_per_class": int(n_per_class), "size": int(size), "seed": int(seed)}
    return _ensure(
        root,
        CRACK_CLASSIFICATION,
        params,
        2 * int(n_per_class),
        CLASS_DIRS,
        int(n_per_class),
        lambda tmp: generate_crack_classification(tmp, progress=progress, workers=workers, **params),
        f"{n_per_class} crack + {n_per_class} no-crack images, {size} px, seed {seed}",
    )


def ensure_crack_segmentation(
    root: str | Path,
    n_per_class: int = 300,
    size: int = 227,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the crack-mask set for these parameters (rules of :func:`ensure_crack_classification`)."""
    _check_params(n_per_class, size, seed, "n_per_class")
    params = {"n_per_class": int(n_per_class), "size": int(size), "seed": int(seed)}
    return _ensure(
        root,
        CRACK_SEGMENTATION,
        params,
        2 * int(n_per_class),
        ("images", "masks"),
        2 * int(n_per_class),
        lambda tmp: generate_crack_segmentation(tmp, progress=progress, workers=workers, **params),
        f"{n_per_class} crack + {n_per_class} no-crack images with masks, {size} px, seed {seed}",
    )


def ensure_steel_segmentation(
    root: str | Path,
    n_images: int = 175,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    conditions: str = "clean",
    defect_set: str = "mixed",
) -> Path:
    """Make sure ``root`` holds the stage-2 set for these parameters; cheap when it already does.

    Same crash-safety and refusal rules as :func:`ensure_crack_classification`.
    """
    _check_params(n_images, size, seed, "n_images")
    _check_conditions(conditions)
    _check_defect_set(defect_set)
    params = {
        "n_images": int(n_images),
        "size": int(size),
        "seed": int(seed),
        "conditions": conditions,
        "defect_set": defect_set,
    }
    return _ensure(
        root,
        STEEL_SEGMENTATION,
        params,
        int(n_images),
        ("images", "masks"),
        int(n_images),
        lambda tmp: generate_steel_segmentation(tmp, progress=progress, workers=workers, **params),
        f"{n_images} images with masks, {size} px, seed {seed}, {conditions} conditions, {defect_set} defects",
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m defectseg.data.synthetic",
        description="Generate the embedded synthetic data sets (idempotent: nothing is redone if ROOT already matches).",
    )
    parser.add_argument(
        "kind",
        choices=("cls", "seg"),
        help="cls: concrete crack classification (stage 1); seg: steel defect segmentation (stage 2)",
    )
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument(
        "--n", type=int, default=None, help="images per class (cls, default 300) or images (seg, default 175)"
    )
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 227 for cls, 256 for seg)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conditions",
        choices=CONDITIONS,
        default="clean",
        help="seg only: clean (default) or field (look-alike marks, faint defects, poor light)",
    )
    parser.add_argument(
        "--defect-set",
        choices=DEFECT_SETS,
        default="mixed",
        help="seg only: mixed (default: every defect kind) or one kind alone, as the paper's 'single defect' set",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes; 0 (default): one per CPU for sets of 256+ images"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cls = args.kind == "cls"
    n = args.n if args.n is not None else (300 if cls else 175)
    size = args.size if args.size is not None else (227 if cls else 256)
    common = {"size": size, "seed": args.seed, "progress": not args.no_progress, "workers": args.workers}
    try:
        if cls:
            root = ensure_crack_classification(args.root, n_per_class=n, **common)
        else:
            root = ensure_steel_segmentation(
                args.root, n_images=n, conditions=args.conditions, defect_set=args.defect_set, **common
            )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{root} ({read_manifest(root)['count']} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
