"""Predict defect masks on new photos, of any size, and measure every defect.

    python -m defectseg.predict input=PHOTO|FOLDER|'GLOB' [checkpoint=RUN_DIR|CKPT|ONNX] [mm_per_px=0.1] [key=value ...]

The model is by default the best checkpoint of the latest fine-tune run
(``outputs/finetune/latest``). Writes into the run directory: ``masks/``, ``overlays/``,
optionally ``probabilities/``, and ``predictions.csv`` + ``predictions.json``. An
unreadable photo is named and skipped; the run goes on and exits 1 at the end.
An exported ``.onnx`` model runs in ONNX Runtime: no torch, no Lightning.
"""

from __future__ import annotations

import csv
import glob
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from defectseg.data.readers import IMAGE_EXTENSIONS, DataError, read_image
from defectseg.inference.measure import add_millimetres, measure_defects, remove_small_components, summarise
from defectseg.inference.overlay import draw_overlay
from defectseg.inference.runtime import Segmenter, load_segmenter
from defectseg.inference.tiling import probability_map
from defectseg.utils.errors import UserError, exit_cleanly_on_user_error
from defectseg.utils.io import atomic_write_json, atomic_writer
from defectseg.utils.naming import register_resolvers
from defectseg.utils.run_directory import make_output_dir

log = logging.getLogger(__name__)
register_resolvers()

CSV_COLUMNS = [
    "image",
    "status",
    "width",
    "height",
    "defects",
    "thin_defects",
    "defect_area_px",
    "defect_area_percent",
    "largest_defect_px",
    "total_length_px",
    "max_width_px",
    "defect_area_mm2",
    "largest_defect_mm2",
    "total_length_mm",
    "max_width_mm",
    "threshold",
    "mask",
    "overlay",
    "probability",
    "error",
]


def collect_inputs(pattern: str, recursive: bool = False) -> list[Path]:
    """An image file, a folder's images, or a glob's matches (sorted); a named file is taken whatever its extension."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        candidates = path.rglob("*") if recursive else path.iterdir()
        found = sorted(
            p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not found:
            raise UserError(
                f"{path}: holds no images ({', '.join(IMAGE_EXTENSIONS)}){'' if recursive else '; recursive=true also searches its subfolders'}"
            )
        return found
    if glob.has_magic(str(path)):
        found = sorted(
            Path(p)
            for p in glob.glob(str(path), recursive=True)
            if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise UserError(f"input={pattern}: the pattern matches no image file ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    raise UserError(f"input={pattern}: no such file or folder")


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names from file stems; photos sharing a stem (from different folders) get _2, _3..."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        names.append(path.stem if count == 1 else f"{path.stem}_{count}")
    return names


def write_png(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path, binary=True) as handle:
        Image.fromarray(array).save(handle, format="PNG")


def write_probability(path_stem: Path, probability: np.ndarray, kind: str) -> Path | None:
    if kind == "png":
        path = path_stem.with_suffix(".png")
        write_png(path, (probability * 255.0 + 0.5).astype(np.uint8))
        return path
    if kind == "npy":
        path = path_stem.with_suffix(".npy")
        with atomic_writer(path, binary=True) as handle:
            np.save(handle, probability.astype(np.float32))
        return path
    return None


def predict_one(
    image: np.ndarray,
    segmenter: Segmenter,
    cfg: DictConfig,
    threshold: float,
    tile_size: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Probability map, binary mask (speckle removed) and per-defect measurements of one photo."""
    probability = probability_map(
        image,
        segmenter,
        tile_size=tile_size,
        overlap=float(cfg.tiling.overlap),
        batch_size=int(cfg.tiling.batch_size),
        multiple=segmenter.info.multiple,
        scale=float(cfg.scale),
        on_progress=on_progress,
    )
    mask = remove_small_components(probability > threshold, int(cfg.min_defect_area_px))
    defects = [add_millimetres(d, cfg.mm_per_px) for d in measure_defects(mask, float(cfg.thin_min_elongation))]
    return probability, mask, defects


def save_photo_outputs(
    output_dir: Path,
    stem: str,
    image: np.ndarray,
    probability: np.ndarray,
    mask: np.ndarray,
    defects: list[dict[str, Any]],
    cfg: DictConfig,
) -> dict[str, Path]:
    """masks/STEM.png, and as configured overlays/STEM.png and probabilities/STEM.(png|npy)."""
    files = {"mask": output_dir / "masks" / f"{stem}.png"}
    write_png(files["mask"], mask.astype(np.uint8) * np.uint8(255))
    if cfg.save.overlay:
        files["overlay"] = output_dir / "overlays" / f"{stem}.png"
        write_png(files["overlay"], draw_overlay(image, mask, defects, **OmegaConf.to_container(cfg.overlay)))
    probability_file = write_probability(
        output_dir / "probabilities" / stem, probability, str(cfg.save.probability or "none")
    )
    if probability_file:
        files["probability"] = probability_file
    return files


def check_settings(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise UserError(
            "no input given: set input=PATH (a photo, a folder of photos, or a quoted glob such as input='photos/*.jpg')"
        )
    if cfg.threshold is not None and not 0.0 < float(cfg.threshold) < 1.0:
        raise UserError(f"threshold must lie strictly between 0 and 1, got {cfg.threshold}")
    if cfg.mm_per_px is not None and float(cfg.mm_per_px) <= 0:
        raise UserError(f"mm_per_px must be positive (millimetres per pixel), got {cfg.mm_per_px}")
    if cfg.save.probability not in ("none", "png", "npy", None, False):
        raise UserError(f"save.probability must be none, png or npy, got {cfg.save.probability}")


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    check_settings(cfg)
    paths = collect_inputs(str(cfg.input), bool(cfg.recursive))
    segmenter = load_segmenter(cfg.checkpoint, str(cfg.device))
    info = segmenter.info
    threshold = float(cfg.threshold) if cfg.threshold is not None else info.threshold
    threshold_source = "threshold= (given)" if cfg.threshold is not None else info.threshold_source
    tile_size = int(cfg.tiling.tile_size or info.tile_size or 256)
    output_dir = make_output_dir(cfg.output_dir, "output_dir")  # one line, not a traceback, when a file is in the way
    log.info(
        "%d photo(s) -> %s; model %s (%s), threshold %.2f from %s, tiles %d px",
        len(paths),
        output_dir,
        info.source,
        info.runtime,
        threshold,
        threshold_source,
        tile_size,
    )

    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    complete = False
    try:
        progress = tqdm(
            zip(paths, unique_stems(paths)),
            total=len(paths),
            unit="photo",
            desc="predict",
            disable=not cfg.progress,
            file=sys.stderr,
        )
        tiles = tqdm(
            unit="tile", desc="  tiles", leave=False, position=1, disable=not cfg.progress, file=sys.stderr
        )  # a large photo takes minutes

        def show_tiles(done: int, total: int) -> None:
            tiles.total = total
            tiles.update(done - tiles.n)

        for path, stem in progress:
            try:
                image = read_image(path)
            except DataError as error:
                failed.append({"image": str(path), "error": str(error)})
                tqdm.write(f"error: {error} (skipped)", file=sys.stderr)
                progress.set_postfix(failed=len(failed))
                continue
            tiles.reset()
            probability, mask, defects = predict_one(image, segmenter, cfg, threshold, tile_size, show_tiles)
            files = save_photo_outputs(output_dir, stem, image, probability, mask, defects, cfg)
            height, width = mask.shape
            records.append(
                {
                    "image": str(path),
                    "status": "ok",
                    "width": width,
                    "height": height,
                    **add_millimetres(summarise(defects, mask.shape), cfg.mm_per_px),
                    "threshold": threshold,
                    **{kind: str(file.relative_to(output_dir)) for kind, file in files.items()},
                    "components": defects,
                }
            )
        tiles.close()
        complete = True
    finally:
        write_tables(
            output_dir,
            records,
            failed,
            {**info.to_dict(), "threshold": threshold, "threshold_source": threshold_source, "tile_size": tile_size},
            cfg,
            complete,
        )

    summary = {
        "images": len(paths),
        "predicted": len(records),
        "failed": failed,
        "output_dir": str(output_dir),
        "threshold": threshold,
    }
    log.info("%d of %d photo(s) predicted -> %s", len(records), len(paths), output_dir / "predictions.csv")
    return summary


def write_tables(
    output_dir: Path,
    records: list[dict[str, Any]],
    failed: list[dict[str, str]],
    model: dict[str, Any],
    cfg: DictConfig,
    complete: bool,
) -> None:
    """predictions.json (per photo and per defect) and predictions.csv (one row per photo, failures included)."""
    settings = {
        key: OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in ("input", "scale", "mm_per_px", "min_defect_area_px", "thin_min_elongation", "tiling")
    }
    atomic_write_json(
        output_dir / "predictions.json",
        {"complete": complete, "model": model, "settings": settings, "images": records, "failed": failed},
    )
    with atomic_writer(output_dir / "predictions.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        writer.writerows({"image": f["image"], "status": "failed", "error": f["error"]} for f in failed)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_cleanly_on_user_error
def main(cfg: DictConfig) -> None:
    summary = run_predict(cfg)
    if summary["failed"]:
        names = "\n  ".join(f["error"] for f in summary["failed"])
        print(
            f"error: {len(summary['failed'])} of {summary['images']} photo(s) could not be read:\n  {names}",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
