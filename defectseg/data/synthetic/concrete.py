"""Stage-1 photos: concrete with or without a crack (pure drawing; :mod:`.publish` writes the files).

Stage-1 clutter (stains, pores, straight formwork lines) is drawn with the same probabilities in both classes: the
only thing separating ``Positive`` from ``Negative`` is a crack, so a classifier cannot succeed by counting dark pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from defectseg.data.synthetic.render import (
    STAGE_CLS,
    Array,
    chord_across,
    crack_alpha,
    fractal,
    line_points,
    noise,
    pixel_grid,
    radial,
    ramp,
    render_discs,
    smoothstep,
    to_uint8,
)


def _concrete_image(rng: np.random.Generator, size: int, crack: bool) -> tuple[Array, Array]:
    """A 227-px-style concrete crop and its crack opacity (zeros without a crack); clutter is drawn identically
    for both classes (see module doc)."""
    s, sc = size, size / 227.0
    a = np.zeros((s, s), np.float32)
    base = rng.uniform(0.48, 0.8)
    g = base * (
        1.0
        + rng.uniform(0.03, 0.08) * fractal(rng, s, s, [c * sc for c in (110, 55, 28)], 0.7)  # mottling
        + rng.uniform(0.03, 0.06) * noise(rng, s, s, 2.2 * sc)  # sand grain
        + rng.uniform(0.02, 0.05) * noise(rng, s, s, 0.8)  # fine grain
    )
    # aggregate: sparse light and dark speckles the size of sand grains and small stones
    speck = (rng.random((s, s)) < rng.uniform(0.004, 0.02)) * rng.normal(0, 1, (s, s))
    speck = ndimage.gaussian_filter(speck.astype(np.float32), 0.8 * sc)
    g *= 1.0 + rng.uniform(0.4, 1.0) * speck / (np.abs(speck).max() + 1e-6) * 0.35
    # stains: darker (damp, dirt) or lighter (efflorescence) blotches; sometimes strong -> hard negative
    if rng.random() < 0.55:
        st = smoothstep(
            fractal(rng, s, s, [c * sc for c in (60, 30, 12)], 0.55),
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
        pores = render_discs(rng.uniform(0, s, n_pores), rng.uniform(0, s, n_pores), rad, s, s, edge=1.2 * max(sc, 0.7))
        depth = rng.uniform(0.25, 0.55) * (1.0 + 0.4 * noise(rng, s, s, 3.0 * sc)).clip(0.3, 1.6)  # pore to pore
        g *= 1.0 - depth * pores
    # formwork lines and joints: long, straight, even -- dark but not crack-shaped -> hard negative
    if rng.random() < 0.3:
        x0, y0, theta, length = chord_across(rng, s, s)
        if rng.random() < 0.5:  # a thin straight line (board joint, scribe)
            x, y, _ = line_points(x0, y0, theta, length)
            line = render_discs(x, y, np.full(len(x), rng.uniform(0.5, 1.6) * sc), s, s, edge=max(0.7, sc))
            g *= 1.0 - rng.uniform(0.2, 0.45) * line
        else:  # a step between two pours or boards: a straight brightness edge
            yy, xx = pixel_grid(s, s)
            signed = (xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta)
            g *= 1.0 + rng.uniform(-0.12, 0.12) * np.clip(signed / (1.5 * sc) + 0.5, 0, 1)
    if crack:
        for _ in range(4):  # a crack that only grazes a corner would be a label error, not a hard case
            a = crack_alpha(rng, s, s, scale=sc)
            if np.count_nonzero(a >= 0.5) >= 0.4 * s * max(sc, 0.5):
                break
        depth = rng.uniform(0.55, 0.85) * (0.9 + 0.1 * noise(rng, s, s, 3 * sc)).clip(0.6, 1.1)
        g *= 1.0 - depth * a
    # camera: uneven light, vignetting, slight defocus
    g *= 1.0 + rng.uniform(0.0, 0.3) * ramp(rng, s, s)
    g *= 1.0 - rng.uniform(0.0, 0.25) * radial(rng, s, s)
    g = ndimage.gaussian_filter(g, rng.uniform(0.3, 0.7) * max(sc, 0.5))
    warm = rng.normal(0, 0.025)
    tint = 1.0 + np.array([warm, 0.2 * warm, -warm]) + rng.normal(0, 0.012, 3)
    rgb = g[..., None] * tint[None, None, :].astype(np.float32)
    rgb += rng.normal(0, rng.uniform(0.004, 0.015), (s, s, 1)).astype(np.float32)
    return to_uint8(rgb), a


def concrete_sample(seed: int, label: int, index: int, size: int) -> tuple[Array, Array]:
    """Photo and crack mask (bool) of one stage-1 image: the classification set and the crack-mask set share the
    photos."""
    image, alpha = _concrete_image(np.random.default_rng([seed, STAGE_CLS, label, index]), size, crack=bool(label))
    return image, alpha >= 0.5
