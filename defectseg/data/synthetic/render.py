"""Drawing primitives shared by both synthetic sets: smooth noise, soft strokes, and the crack model.

Pure functions of a random generator: no files, no folders. Both stages draw their cracks with
:func:`crack_alpha`, so what the stage-1 encoder learns about crack *shape* can transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

Array = np.ndarray

#: Mixed into the seeds so the two sets never share random streams.
STAGE_CLS, STAGE_SEG = 1, 2

# --------------------------------------------------------------------------------------------
# Noise primitives (PIL's bicubic resize of a coarse random grid is ~10x faster than ndimage.zoom)
# --------------------------------------------------------------------------------------------


def aniso_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> Array:
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


def noise(rng: np.random.Generator, h: int, w: int, cell: float) -> Array:
    return aniso_noise(rng, h, w, cell, cell)


def fractal(rng: np.random.Generator, h: int, w: int, cells: Sequence[float], persistence: float = 0.6) -> Array:
    """Sum of octaves, coarse to fine, renormalised to unit std: natural-looking mottling."""
    out = np.zeros((h, w), np.float32)
    for k, cell in enumerate(cells):
        out += (persistence**k) * noise(rng, h, w, cell)
    return out / (out.std() + 1e-6)


def _smooth1d(rng: np.random.Generator, n: int, sigma: float) -> Array:
    """Unit-std correlated 1-D noise (``sigma`` in samples): wiggles of a path or its width."""
    x = ndimage.gaussian_filter1d(rng.standard_normal(n), max(sigma, 0.3), mode="reflect")
    return x / (x.std() + 1e-9)


def pixel_grid(h: int, w: int, y0: int = 0, x0: int = 0) -> tuple[Array, Array]:
    """Broadcastable pixel coordinates (a column and a row): full coordinate planes cost 2x more."""
    return np.arange(y0, y0 + h, dtype=np.float32)[:, None], np.arange(x0, x0 + w, dtype=np.float32)[None, :]


def ramp(rng: np.random.Generator, h: int, w: int) -> Array:
    """A linear ramp in [-0.5, 0.5] along a random direction: uneven lighting across the photo."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = pixel_grid(h, w)
    r = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    return (r / (np.abs(r).max() + 1e-6) * 0.5).astype(np.float32)


def radial(rng: np.random.Generator, h: int, w: int) -> Array:
    """Squared distance from a jittered centre, about 1 at the corners: lens vignetting."""
    cy, cx = h / 2 + rng.normal(0, h / 8), w / 2 + rng.normal(0, w / 8)
    yy, xx = pixel_grid(h, w)
    return (((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2).astype(np.float32) * 2.0


def smoothstep(x: Array, lo: float, hi: float) -> Array:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------
# Strokes: soft union-of-discs rendering through one Euclidean distance transform
# --------------------------------------------------------------------------------------------


_RING = np.ones((3, 3), bool)


def tidy_alpha(alpha: Array) -> Array:
    """Zero any opacity that is not in, or right next to, the mask (``alpha >= 0.5``).

    Soft edges are kept as a one-pixel anti-aliasing rim; faint specks elsewhere (a noise crest
    just under the threshold, a stroke grazing between pixel centres) would change the picture
    where the mask says nothing happened, so they are not painted at all.
    """
    near = ndimage.binary_dilation(alpha >= 0.5, structure=_RING)
    return np.where(near, alpha, 0.0).astype(np.float32)


def render_discs(x: Array, y: Array, r: Array, h: int, w: int, edge: float = 1.0, min_radius: float = 0.75) -> Array:
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
    alpha[iy0 : iy1 + 1, ix0 : ix1 + 1] = tidy_alpha(a[iy0 - y0 : iy1 - y0 + 1, ix0 - x0 : ix1 - x0 + 1])
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
    return render_discs(x, y, r, height, width, edge=max(0.6, 0.9 * scale))


def line_points(
    x0: float, y0: float, theta: float, length: float, curvature: float = 0.0
) -> tuple[Array, Array, Array]:
    """Points every 0.5 px along a straight line or constant-curvature arc, and the arc parameter."""
    s = np.arange(0.0, length, 0.5)
    th = theta + curvature * s
    x = x0 + np.concatenate([[0.0], np.cumsum(np.cos(th[:-1]))]) * 0.5
    y = y0 + np.concatenate([[0.0], np.cumsum(np.sin(th[:-1]))]) * 0.5
    return x, y, s / max(length, 1e-6)


def chord_across(rng: np.random.Generator, h: int, w: int) -> tuple[float, float, float, float]:
    """A straight line crossing the whole image: start point, angle, length."""
    theta = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    half = float(np.hypot(h, w))
    return cx - half * np.cos(theta), cy - half * np.sin(theta), theta, 2 * half


def to_uint8(x: Array) -> Array:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
