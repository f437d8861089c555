"""Stage-2 photos: steel surfaces with painted defects and their exact masks (pure drawing; :mod:`.publish` writes).

Every defect is an opacity map ``alpha``; the image is painted with that ``alpha`` and the mask is ``alpha >= 0.5``.
Background, defects and camera effects use separate random streams, so the same image can be re-rendered without its
defects (tests use this to check that the mask covers exactly what the defects changed). Each defect kind has one
painter in :data:`PAINTERS`; :func:`steel_sample` paints them one at a time, so the kind and the pixels of every
painted defect are known together (``name`` and ``hit`` in its loop).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from defectseg.data.synthetic.render import (
    STAGE_SEG,
    Array,
    aniso_noise,
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
    tidy_alpha,
    to_uint8,
)
from defectseg.utils.errors import ConfigError

_STEEL_KINDS = ("brushed", "painted", "rusty")
DEFECT_KINDS = ("crack", "corrosion", "pits", "scratch")
#: the class names of the steel set's ``labels/`` (class-index masks, 1..4 in this order): ``dataset.classes``
SYNTHETIC_CLASSES = ("crack", "corrosion", "pit", "scratch")
_EMPTY_FRACTION = 0.05  # real sets hold some defect-free photos; a model must learn to predict nothing
#: Stage-2 photo conditions. "clean" (the default): even light, every defect at full contrast,
#: nothing on the surface but the defects, welds and bolts -- 123 labelled photos teach a U-Net
#: nearly all of it (test Dice 0.88 from scratch at the paper's 100 epochs, where the paper's real
#: photos gave 0.71). "field": look-alike marks (:func:`look_alikes`), faint defects, darker and
#: noisier exposures, as on photos of real structures (0.57 from scratch, same protocol).
CONDITIONS = ("clean", "field")
#: Stage-2 defect sets, as the two training sets of the paper's Table 1: "mixed" (the default: every
#: defect kind, like its set "of various types") or one kind alone, like its "single defect only" set.
#: A single-kind set keeps every random draw of the mixed one (backgrounds, number and placement
#: streams of defects, camera): only the painter changes.
DEFECT_SETS = ("mixed", *DEFECT_KINDS)
_FIELD_SEVERITY = (0.3, 1.0)  # contrast of a defect, from faint (early, dirty, painted over) to full


def check_conditions(conditions: str) -> None:
    if conditions not in CONDITIONS:
        raise ConfigError(f"conditions must be one of {', '.join(CONDITIONS)}, got {conditions!r}")


def check_defect_set(defect_set: str) -> None:
    if defect_set not in DEFECT_SETS:
        raise ConfigError(f"defect_set must be one of {', '.join(DEFECT_SETS)}, got {defect_set!r}")


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
            + rng.uniform(0.03, 0.07) * aniso_noise(rng, s, s, 1.0, rng.uniform(25, 70) * sc)  # long streaks
            + rng.uniform(0.02, 0.04) * aniso_noise(rng, s, s, 1.0, 5 * sc)  # short scratches of the brush
            + rng.uniform(0.05, 0.14) * aniso_noise(rng, s, s, rng.uniform(40, 90) * sc, 4 * s)  # sheen bands
        )
        if rng.random() < 0.5:
            g = g.T
        tint = np.array([0.98, 1.0, 1.03], np.float32) + rng.normal(0, 0.01, 3).astype(np.float32)
        return g[..., None] * tint
    if kind == "painted":
        colour = _PAINTS[rng.integers(len(_PAINTS))] * (1.0 + rng.normal(0, 0.06, 3)).astype(np.float32)
        g = (
            1.0
            + rng.uniform(0.015, 0.035) * noise(rng, s, s, rng.uniform(2.5, 5.0) * sc)  # orange peel
            + 0.01 * noise(rng, s, s, 0.8)
            + rng.uniform(0.02, 0.06) * fractal(rng, s, s, [c * sc for c in (120, 60)], 0.6)  # uneven coat
        )
        rgb = g[..., None] * colour
        if rng.random() < 0.35:  # grime, not a defect
            dirt = smoothstep(fractal(rng, s, s, [c * sc for c in (70, 35, 15)]), t := rng.uniform(0.5, 1.5), t + 1.0)
            rgb *= (1.0 - rng.uniform(0.08, 0.2) * dirt)[..., None]
        return rgb
    # rusty: weathered steel under uneven surface rust; the corrosion *defects* are heavier and darker
    cover = smoothstep(
        fractal(rng, s, s, [c * sc for c in (80, 40, 20, 10)], 0.6), rng.uniform(-1.5, -0.3), rng.uniform(1.0, 2.5)
    )
    tone = smoothstep(fractal(rng, s, s, [c * sc for c in (30, 12, 5)], 0.7), -1.5, 1.5)
    steel = np.array([0.50, 0.48, 0.46], np.float32) * rng.uniform(0.8, 1.1)
    rust_a = np.array([0.56, 0.40, 0.28], np.float32) * rng.uniform(0.85, 1.1)  # light brown film
    rust_b = np.array([0.62, 0.36, 0.18], np.float32) * rng.uniform(0.85, 1.1)  # orange streaks
    rust = rust_a * (1 - tone[..., None]) + rust_b * tone[..., None]
    grain = 1.0 + 0.05 * noise(rng, s, s, 1.5 * sc) + 0.04 * noise(rng, s, s, 0.8)
    return (steel * (1 - cover[..., None]) + rust * cover[..., None]) * grain[..., None]


def _weld_seam(rng: np.random.Generator, rgb: Array) -> None:
    """A weld bead: a bright, rippled, straight band with a heat tint beside it (not a defect)."""
    s = rgb.shape[0]
    sc = s / 256.0
    theta = rng.integers(0, 2) * np.pi / 2 + rng.normal(0, 0.08)
    cx, cy = rng.uniform(0.15, 0.85) * s, rng.uniform(0.15, 0.85) * s
    yy, xx = pixel_grid(s, s)
    u = (xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta)  # across the seam
    v = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # along it
    hw = rng.uniform(7, 13) * sc
    bead = np.clip(1.0 - (u / hw) ** 2, 0, 1)
    period = rng.uniform(3, 6) * sc
    ripple = 0.5 + 0.5 * np.sin(2 * np.pi * (v - 0.6 * hw * (u / hw) ** 2) / period)
    shade = 0.45 + 0.35 * np.sqrt(bead) * (0.7 + 0.3 * ripple) + 0.15 * (u / hw).clip(-1, 1)
    weld = (shade * (1 + 0.05 * noise(rng, s, s, 1.5 * sc)))[..., None] * np.array([0.95, 0.95, 0.97], np.float32)
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
    yy, xx = pixel_grid(s, s)
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
    yy, xx = pixel_grid(h, w, y0, x0)
    ax = rng.uniform(0.6, 1.0)  # elongation
    ang = rng.uniform(0, np.pi)
    du, dv = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang), -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    dist = np.hypot(du, dv / ax)
    field = (
        R
        * (1.0 + 0.3 * noise(rng, h, w, R * 0.6) + 0.12 * noise(rng, h, w, 5 * sc) + 0.06 * noise(rng, h, w, 1.8 * sc))
        - dist
    )
    # divide by the gradient to get a signed distance in pixels: the soft rim is then ~1 px wide
    # everywhere, where the raw noisy field would leave wide sub-threshold fringes outside the mask
    gy, gx = np.gradient(field)
    a = tidy_alpha(np.clip(field / (np.hypot(gy, gx) + 0.05) / (0.9 * max(sc, 0.7)) + 0.5, 0, 1))
    tex = fractal(rng, h, w, [R * 0.4, 8 * sc, 3 * sc, 1.5 * sc], 0.7)
    dark = np.array([0.28, 0.13, 0.07], np.float32) * rng.uniform(0.8, 1.15)
    orange = np.array([0.70, 0.36, 0.12], np.float32) * rng.uniform(0.85, 1.1)
    t = smoothstep(tex, -1.0, 1.0)[..., None]
    rust = dark * (1 - t) + orange * t
    flakes = (tex > 1.6)[..., None]  # crusty lighter flakes
    rust = np.where(flakes, rust * 1.25, rust) * (1 + 0.08 * noise(rng, h, w, 0.8))[..., None]
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
    a = render_discs(x, y, r, s, s, edge=0.8 * max(sc, 0.7))
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
        x, y, t = line_points(x0, y0, theta, lk, curvature)
        rmax = rng.uniform(0.5, 1.3) * sc
        taper = np.minimum(1.0, np.minimum(t, 1 - t) / 0.15) ** 0.5
        r = np.where(taper < 0.3, 0.0, rmax * taper)
        xs.append(x), ys.append(y), rs.append(r)
    a = render_discs(np.concatenate(xs), np.concatenate(ys), np.concatenate(rs), s, s, edge=0.7 * max(sc, 0.7))
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


PAINTERS: dict[str, Callable[[np.random.Generator, Array], Array]] = {
    "crack": _steel_crack,
    "corrosion": _corrosion,
    "pits": _pits,
    "scratch": _scratch,
}


def look_alikes(rng: np.random.Generator, rgb: Array) -> None:
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
            blot = smoothstep(
                fractal(rng, s, s, [c * sc for c in (60, 30, 12)], 0.6),
                t := rng.uniform(0.6, 1.6),
                t + rng.uniform(0.3, 1.0),
            )
            rgb *= (1.0 - rng.uniform(0.15, 0.45) * blot)[..., None]
        elif kind == "streaks":
            streaks = smoothstep(aniso_noise(rng, s, s, rng.uniform(40, 120) * sc, rng.uniform(2, 5) * sc), 1.0, 2.2)
            streaks = streaks * smoothstep(noise(rng, s, s, 80 * sc), -0.5, 0.8)
            if rng.random() < 0.5:
                streaks = streaks.T
            tint = np.array([0.55, 0.45, 0.38] if rng.random() < 0.5 else [0.3, 0.3, 0.3], np.float32)
            a = (rng.uniform(0.3, 0.6) * streaks)[..., None]
            rgb[:] = rgb * (1 - a) + tint * a
        elif kind == "marker":
            x0, y0 = rng.uniform(0.1, 0.9, 2) * s
            x, y, _ = line_points(x0, y0, rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.7) * s, rng.normal(0, 2.0 / s))
            pick = int(rng.integers(3))  # white chalk (broad), yellow or black paint marker
            a = render_discs(
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
            a = 0.7 * render_discs(x, y, (0.7 + rng.gamma(2.0, 0.4, k)).clip(0.7, 3.0) * sc, s, s, edge=0.8)[..., None]
            rgb[:] = rgb * (1 - a) + rng.uniform(0.2, 0.7) * a
        else:
            x0, y0, theta, _ = chord_across(rng, s, s)
            yy, xx = pixel_grid(s, s)
            signed = (xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta)
            rgb *= (1.0 - rng.uniform(0.2, 0.45) * np.clip(signed / (rng.uniform(1, 4) * sc) + 0.5, 0, 1))[..., None]


def steel_sample(
    seed: int, index: int, size: int, defects: bool = True, conditions: str = "clean", defect_set: str = "mixed"
) -> tuple[Array, Array, list[str]]:
    """Image ``index`` of the steel set: (RGB uint8, mask bool, defect kinds); see :func:`steel_labelled`."""
    image, labels, kinds = steel_labelled(seed, index, size, defects, conditions, defect_set)
    return image, labels > 0, kinds


def steel_labelled(
    seed: int, index: int, size: int, defects: bool = True, conditions: str = "clean", defect_set: str = "mixed"
) -> tuple[Array, Array, list[str]]:
    """Image ``index`` of the steel set: (RGB uint8, label map uint8: 0, or 1 + the index of the defect's kind in
    :data:`SYNTHETIC_CLASSES`, the one painted last where two overlap; defect kinds).

    Background, defects and camera draw from separate streams, so ``defects=False`` renders the
    very same photo without its defects -- the reference for checking that masks are exact.
    ``conditions="clean"`` is the studio-like default; ``"field"`` adds what field photos have
    (see :data:`CONDITIONS`) from a fourth stream, so the clean photo's background, defects and
    camera stay the same draws. ``defect_set``: one of :data:`DEFECT_SETS`.
    """
    check_conditions(conditions)
    check_defect_set(defect_set)
    field = conditions == "field"
    bg_rng, defect_rng, cam_rng, field_rng = (
        np.random.default_rng(ss) for ss in np.random.SeedSequence([seed, STAGE_SEG, index]).spawn(4)
    )
    s = size
    kind = _STEEL_KINDS[int(bg_rng.choice(3, p=[0.35, 0.4, 0.25]))]
    rgb = _steel_background(bg_rng, s, kind).astype(np.float32)
    if bg_rng.random() < 0.2:
        _weld_seam(bg_rng, rgb)
    if bg_rng.random() < 0.2:
        _bolts(bg_rng, rgb)
    if field:
        look_alikes(field_rng, rgb)
    labels = np.zeros((s, s), np.uint8)
    kinds: list[str] = []
    n_defects = (
        0 if defect_rng.random() < _EMPTY_FRACTION else int(defect_rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    )
    for _ in range(n_defects):
        name = DEFECT_KINDS[
            int(defect_rng.choice(4, p=[0.35, 0.25, 0.2, 0.2]))
        ]  # drawn either way: streams stay aligned
        if defect_set != "mixed":
            name = defect_set
        sub = np.random.default_rng(defect_rng.integers(2**63))  # one stream per defect, same either way
        severity = field_rng.uniform(*_FIELD_SEVERITY) if field else 1.0  # drawn either way: streams stay aligned
        if not defects:
            continue
        before = rgb.copy() if severity < 1.0 else None
        hit = PAINTERS[name](sub, rgb) >= 0.5
        if before is not None:  # a faint defect: only part of the way from the bare surface to the painted one
            rgb[:] = before + severity * (rgb - before)
        if hit.any():  # a defect drawn off the image changes nothing and is not listed
            labels[hit] = DEFECT_KINDS.index(name) + 1
            kinds.append(name)
    # camera: uneven light, vignetting, sensor noise -- identical with or without defects
    light = (1.0 + cam_rng.uniform(0.05, 0.4) * ramp(cam_rng, s, s)) * (
        1.0 - cam_rng.uniform(0.0, 0.3) * radial(cam_rng, s, s)
    )
    exposure = field_rng.uniform(0.6, 1.1) if field else 1.0  # overcast days, shaded girders
    rgb *= light[..., None] * (cam_rng.uniform(0.85, 1.15) * exposure)
    noise_gain = field_rng.uniform(1.0, 2.5) if field else 1.0  # higher ISO in poor light
    rgb += cam_rng.normal(0, cam_rng.uniform(0.005, 0.02), (s, s, 3)).astype(np.float32) * noise_gain
    return to_uint8(rgb), labels, kinds
