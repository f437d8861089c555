"""The files predict writes for one photo: masks, per-class masks, overlays, probabilities and report previews.

A binary model: ``masks/NAME.png`` 0/255 and ``overlays/NAME.png`` tinted in ``overlay.color``. A model with classes:
``masks/NAME.png`` an indexed (palette) PNG, 0 background and k the k-th class, its palette the overlay colours; with
``classes.masks=true`` also ``class_masks/CLASS/NAME.png`` (0/255, one per class: a multilabel model's overlapping
classes are all kept there); the overlay one colour per class with a legend underneath.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from defectseg.inference.classes import ClassDecoder, mask_palette
from defectseg.inference.overlay import draw_class_overlay, draw_overlay
from defectseg.inference.report_html import write_preview
from defectseg.utils.io import atomic_writer

#: a photo's files: kind -> path, or kind -> {class: path} (class_masks, class_probabilities)
PhotoFiles = dict[str, Any]


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """``array`` as a PNG, atomically; with ``palette`` (768 values) an indexed PNG of the array's values."""
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)  # an L image with a palette is a P image: the values stay the indices
    with atomic_writer(path, binary=True) as handle:
        image.save(handle, format="PNG")


def probability_kind(cfg: DictConfig) -> str:
    """What save.probability writes: none, png or npy."""
    return str(cfg.save.probability or "none")


def write_probability(path_stem: Path, probability: np.ndarray, kind: str) -> Path | None:
    """``path_stem`` + ``.png`` or ``.npy``, appended: ``with_suffix`` would cut ``pier.v1`` at its dot."""
    if kind == "png":
        path = path_stem.parent / f"{path_stem.name}.png"
        write_png(path, (probability * 255.0 + 0.5).astype(np.uint8))
        return path
    if kind == "npy":
        path = path_stem.parent / f"{path_stem.name}.npy"
        with atomic_writer(path, binary=True) as handle:
            np.save(handle, probability.astype(np.float32))
        return path
    return None


def class_folder(name: str) -> str:
    """A class name as a folder name (anything but letters, digits, ``-``, ``_`` and ``.`` becomes ``_``)."""
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return folder if folder.strip(".") else f"_{folder}"


def write_previews(output_dir: Path, name: str, image: np.ndarray, overlay: np.ndarray, cfg: DictConfig) -> PhotoFiles:
    files = {}
    if cfg.save.report:
        for kind, picture in (("photo", image), ("overlay", overlay)):
            files[f"preview_{kind}"] = output_dir / "previews" / f"{kind}s" / f"{name}.jpg"
            write_preview(files[f"preview_{kind}"], picture, int(cfg.report.preview_px))
    return files


def save_photo_outputs(
    output_dir: Path,
    name: str,
    image: np.ndarray,
    probability: np.ndarray | None,
    mask: np.ndarray,
    defects: list[dict[str, Any]],
    cfg: DictConfig,
) -> PhotoFiles:
    """A binary model: masks/NAME.png, as configured overlays/NAME.png and probabilities/NAME.(png|npy), and
    report.html's previews."""
    files: PhotoFiles = {"mask": output_dir / "masks" / f"{name}.png"}
    write_png(files["mask"], np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255))
    overlay = draw_overlay(image, mask, defects, **OmegaConf.to_container(cfg.overlay))
    if cfg.save.overlay:
        files["overlay"] = output_dir / "overlays" / f"{name}.png"
        write_png(files["overlay"], overlay)
    probability_file = write_probability(output_dir / "probabilities" / name, probability, probability_kind(cfg))
    if probability_file:
        files["probability"] = probability_file
    return {**files, **write_previews(output_dir, name, image, overlay, cfg)}


def save_class_outputs(
    output_dir: Path,
    name: str,
    image: np.ndarray,
    probabilities: np.ndarray | None,
    labels: np.ndarray,
    class_masks: np.ndarray,
    defects: list[dict[str, Any]],
    decoder: ClassDecoder,
    cfg: DictConfig,
) -> PhotoFiles:
    """A model with classes: the palette index mask, as configured the per-class masks, the overlay with its
    legend, the probabilities (npy: every channel in one file; png: one 8-bit file per class) and the previews."""
    files: PhotoFiles = {"mask": output_dir / "masks" / f"{name}.png"}
    write_png(files["mask"], labels, mask_palette(len(decoder.names)))
    if cfg.classes.masks:
        files["class_masks"] = {}
        for class_name, class_mask in zip(decoder.names, class_masks):
            path = output_dir / "class_masks" / class_folder(class_name) / f"{name}.png"
            write_png(path, np.asarray(class_mask, dtype=bool).view(np.uint8) * np.uint8(255))
            files["class_masks"][class_name] = path
    style = cfg.overlay
    overlay = draw_class_overlay(
        image,
        class_masks,
        defects,
        decoder.names,
        decoder.colors,
        alpha=float(style.alpha),
        labels=bool(style.labels),
        max_labels=int(style.max_labels),
    )
    if cfg.save.overlay:
        files["overlay"] = output_dir / "overlays" / f"{name}.png"
        write_png(files["overlay"], overlay)
    kind = probability_kind(cfg)
    if kind == "npy":
        files["probability"] = write_probability(output_dir / "probabilities" / name, probabilities, kind)
    elif kind == "png":
        class_channels = probabilities if decoder.multilabel else probabilities[1:]
        files["class_probabilities"] = {
            class_name: write_probability(output_dir / "probabilities" / class_folder(class_name) / name, p, kind)
            for class_name, p in zip(decoder.names, class_channels)
        }
    return {**files, **write_previews(output_dir, name, image, overlay, cfg)}


def relative_files(files: PhotoFiles, output_dir: Path) -> dict[str, Any]:
    """The record's file fields: paths relative to the output folder (per-class ones as {class: path})."""
    return {
        kind: {k: p.relative_to(output_dir).as_posix() for k, p in value.items()}
        if isinstance(value, dict)
        else value.relative_to(output_dir).as_posix()
        for kind, value in files.items()
    }
