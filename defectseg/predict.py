"""Predict defect masks on new photos, of any size, and measure every defect.

    python -m defectseg.predict input=PHOTO|FOLDER|'GLOB' [checkpoint=RUN_DIR|CKPT|ONNX] [mm_per_px=0.1] [key=value ...]

The model is by default the best checkpoint of the latest fine-tune run
(``outputs/finetune/latest``). Writes into the run directory: ``masks/``, ``overlays/``,
optionally ``probabilities/``, and ``predictions.csv`` + ``predictions.json``. An
unreadable photo is named and skipped; the run goes on and exits 1 at the end.
An exported ``.onnx`` model runs in ONNX Runtime: no torch, no Lightning.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from defectseg.data.readers import IMAGE_EXTENSIONS, DataError, read_image
from defectseg.inference.measure import add_millimetres, measure_defects, remove_small_components, summarise
from defectseg.inference.names import input_root, output_names
from defectseg.inference.overlay import draw_overlay
from defectseg.inference.runtime import Segmenter, load_segmenter
from defectseg.inference.summary import PredictionSummary, remove_stale_temporaries
from defectseg.inference.tiling import probability_map
from defectseg.utils.errors import RunInterrupted, UserError, exit_cleanly_on_user_error
from defectseg.utils.io import atomic_writer
from defectseg.utils.naming import register_resolvers
from defectseg.utils.run_directory import make_output_dir

log = logging.getLogger(__name__)
register_resolvers()


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
            hint = "" if recursive else "; recursive=true also searches its subfolders"
            raise UserError(f"{path}: holds no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
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


def write_png(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path, binary=True) as handle:
        Image.fromarray(array).save(handle, format="PNG")


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
    name: str,
    image: np.ndarray,
    probability: np.ndarray,
    mask: np.ndarray,
    defects: list[dict[str, Any]],
    cfg: DictConfig,
) -> dict[str, Path]:
    """masks/NAME.png, and as configured overlays/NAME.png and probabilities/NAME.(png|npy)."""
    files = {"mask": output_dir / "masks" / f"{name}.png"}
    write_png(files["mask"], mask.astype(np.uint8) * np.uint8(255))
    if cfg.save.overlay:
        files["overlay"] = output_dir / "overlays" / f"{name}.png"
        write_png(files["overlay"], draw_overlay(image, mask, defects, **OmegaConf.to_container(cfg.overlay)))
    probability_file = write_probability(
        output_dir / "probabilities" / name, probability, str(cfg.save.probability or "none")
    )
    if probability_file:
        files["probability"] = probability_file
    return files


def check_settings(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise UserError(
            "no input given: set input=PATH (a photo, a folder of photos, or a quoted glob such as "
            "input='photos/*.jpg')"
        )
    if cfg.threshold is not None and not 0.0 < float(cfg.threshold) < 1.0:
        raise UserError(f"threshold must lie strictly between 0 and 1, got {cfg.threshold}")
    if cfg.mm_per_px is not None and float(cfg.mm_per_px) <= 0:
        raise UserError(f"mm_per_px must be positive (millimetres per pixel), got {cfg.mm_per_px}")
    if cfg.save.probability not in ("none", "png", "npy", None, False):
        raise UserError(f"save.probability must be none, png or npy, got {cfg.save.probability}")


class PredictStopped(Exception):
    """SIGTERM or Ctrl-C during predict: raised in the main thread so the summary is brought up to date first."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into PredictStopped while photos are predicted (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signal_number: int, _frame: Any) -> None:
        raise PredictStopped(signal_number)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second signal must not interrupt the last write of the summary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings a summary is made with; a rerun into the same folder continues it only if they are the same."""
    keys = (
        "input",
        "recursive",
        "scale",
        "mm_per_px",
        "min_defect_area_px",
        "thin_min_elongation",
        "tiling",
        "save",
        "overlay",
    )
    return {key: OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key] for key in keys}


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    check_settings(cfg)
    paths = collect_inputs(str(cfg.input), bool(cfg.recursive))
    names = output_names(paths, input_root(str(cfg.input), paths))
    segmenter = load_segmenter(cfg.checkpoint, str(cfg.device))
    info = segmenter.info
    threshold = float(cfg.threshold) if cfg.threshold is not None else info.threshold
    threshold_source = "threshold= (given)" if cfg.threshold is not None else info.threshold_source
    tile_size = int(cfg.tiling.tile_size or info.tile_size or 256)
    output_dir = make_output_dir(cfg.output_dir, "output_dir")  # one line, not a traceback, when a file is in the way
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed %s (half-written by a run that was killed)", stale)
    model = {**info.to_dict(), "threshold": threshold, "threshold_source": threshold_source, "tile_size": tile_size}
    summary = PredictionSummary(output_dir, model, run_settings(cfg), [str(p) for p in paths])
    taken_over = summary.take_over_previous()
    summary.write()  # from the start: a run killed before its first photo still leaves a valid summary
    log.info(
        "%d photo(s) -> %s; model %s (%s), threshold %.2f from %s, tiles %d px%s",
        len(paths),
        output_dir,
        info.source,
        info.runtime,
        threshold,
        threshold_source,
        tile_size,
        f"; {taken_over} already done here by an earlier run of the same settings" if taken_over else "",
    )

    progress = tqdm(total=len(paths), unit="photo", desc="predict", disable=not cfg.progress, file=sys.stderr)
    tiles = tqdm(  # a large photo takes minutes
        unit="tile", desc="  tiles", leave=False, position=1, disable=not cfg.progress, file=sys.stderr
    )

    def show_tiles(done: int, total: int) -> None:
        tiles.total = total
        tiles.update(done - tiles.n)

    try:
        with stop_on_signals():
            for path, name in zip(paths, names):
                if not summary.is_done(str(path)):
                    predict_and_save(path, name, segmenter, cfg, threshold, tile_size, output_dir, summary, show_tiles)
                progress.update(1)
                if summary.failed:
                    progress.set_postfix(failed=len(summary.failed))
        tiles.close()
        progress.close()
        summary.finish()
    except PredictStopped as stop:
        tiles.close()
        progress.close()
        with signals_ignored():
            summary.write()
        what = "Ctrl-C" if stop.signal_number == signal.SIGINT else str(stop)
        raise RunInterrupted(
            f"{what} after {len(summary.records)} of {len(paths)} photo(s): their files and the summary "
            f"(predictions.json, complete=false) are in {output_dir}; run the same command again to continue",
            stop.signal_number,
        ) from None

    failed = summary.ordered_failures()
    log.info("%d of %d photo(s) predicted -> %s", len(summary.records), len(paths), output_dir / "predictions.csv")
    return {
        "images": len(paths),
        "predicted": len(summary.records),
        "taken_over": taken_over,
        "failed": failed,
        "output_dir": str(output_dir),
        "threshold": threshold,
    }


def predict_and_save(
    path: Path,
    name: str,
    segmenter: Segmenter,
    cfg: DictConfig,
    threshold: float,
    tile_size: int,
    output_dir: Path,
    summary: PredictionSummary,
    on_progress: Callable[[int, int], None],
) -> None:
    """One photo: predict, write its files, then record it in the summary (an unreadable one is recorded as failed)."""
    started = time.perf_counter()
    try:
        image = read_image(path)
    except DataError as error:
        tqdm.write(f"error: {error} (skipped)", file=sys.stderr)
        summary.fail(str(path), str(error))
        return
    probability, mask, defects = predict_one(image, segmenter, cfg, threshold, tile_size, on_progress)
    files = save_photo_outputs(output_dir, name, image, probability, mask, defects, cfg)
    height, width = mask.shape
    summary.add(
        {
            "image": str(path),
            "status": "ok",
            "name": name,
            "width": width,
            "height": height,
            **add_millimetres(summarise(defects, mask.shape), cfg.mm_per_px),
            "threshold": threshold,
            "seconds": round(time.perf_counter() - started, 3),
            **{kind: file.relative_to(output_dir).as_posix() for kind, file in files.items()},
            "components": defects,
        }
    )


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
