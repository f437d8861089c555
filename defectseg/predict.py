"""Predict defect masks on new photos, of any size, measure every defect, and write an inspection report.

    python -m defectseg.predict input=PHOTO|FOLDER|'GLOB' [checkpoint=RUN_DIR|CKPT|ONNX] [mm_per_px=0.1] [key=value ...]

The model is by default the best checkpoint of the latest fine-tune run (``outputs/finetune/latest``); each photo is
shown to it at the scale its training photos were resized to (``scale=auto``). Writes into the run directory
(``output_dir=``): ``masks/``, ``overlays/``, optionally ``probabilities/``, ``previews/``, ``predictions.csv`` +
``predictions.json`` (rewritten after every photo, so a stopped run loses nothing and a rerun continues) and
``report.html``. A model trained with ``dataset.classes`` gives palette masks (0 background, k the k-th class),
optionally ``class_masks/CLASS/``, one overlay colour per class, each defect measured with its class and
``defects.csv`` (docs/defect_types.md). An unreadable photo is named and skipped; the run goes on and exits 1 at the
end. An exported ``.onnx`` model runs in ONNX Runtime: no torch, no Lightning. See docs/predict.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from defectseg.config import validate_config
from defectseg.config.entry import entry_point
from defectseg.data.readers import IMAGE_EXTENSIONS, DataError, read_image
from defectseg.inference.classes import ClassDecoder
from defectseg.inference.measure import add_millimetres, measure_defects, remove_small_components, summarise
from defectseg.inference.names import input_root, output_names, relative_name
from defectseg.inference.outputs import probability_kind, relative_files, save_class_outputs, save_photo_outputs
from defectseg.inference.report_html import write_report
from defectseg.inference.runtime import ModelInfo, Segmenter, load_segmenter
from defectseg.inference.scale import MillimetresPerPixel, min_area_px, parse_scale, photo_scale
from defectseg.inference.summary import PredictionSummary, remove_stale_temporaries
from defectseg.inference.tiling import MAX_TILE, probability_maps, resize_maps
from defectseg.utils.errors import ConfigError, RunInterrupted, UserError
from defectseg.utils.memory import release_freed_memory
from defectseg.utils.naming import register_resolvers
from defectseg.utils.run_directory import make_output_dir

log = logging.getLogger(__name__)
register_resolvers()

#: every defect's type with a binary model (a model with classes gives each defect its class's name)
DEFECT_TYPE = "defect"


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


def model_input(image: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """The photo resampled to the scale the model sees it at (area averaging when shrinking, so thin cracks stay)."""
    height, width = image.shape[:2]
    size = (max(1, round(width * scale_x)), max(1, round(height * scale_y)))
    if size == (width, height):
        return image
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


@dataclass
class Prediction:
    """One photo's probabilities (K x H x W), masks and measured defects, at the photo's size."""

    #: None unless save.probability writes them: a 24 MP photo's map is 96 MB a channel, kept through the overlay
    probabilities: np.ndarray | None
    #: H x W: bool defect mask (binary model) or uint8 class index (0 background) of a model with classes
    mask: np.ndarray
    #: C x H x W bool, one mask per class (None for a binary model)
    class_masks: np.ndarray | None
    defects: list[dict[str, Any]]
    seen: dict[str, Any]


def predict_one(
    image: np.ndarray,
    plan: Plan,
    mm_per_px: float | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Probabilities and masks at the photo's size, per-defect measurements, and how the photo was seen."""
    height, width = image.shape[:2]
    scale_x, scale_y, why = photo_scale(plan.scale, plan.segmenter.info.input_scale, width, height)
    release_freed_memory()  # the previous photo's arrays and this one's decoding buffers, before the network's peak
    probabilities = probability_maps(
        model_input(image, scale_x, scale_y),
        plan.segmenter,
        tile_size=plan.tile_size,
        overlap=float(plan.cfg.tiling.overlap),
        batch_size=int(plan.cfg.tiling.batch_size),
        multiple=plan.segmenter.info.multiple,
        on_progress=on_progress,
        margin=plan.margin,
    )
    if probabilities.shape[1:] != (height, width):
        probabilities = resize_maps(probabilities, height, width)
    release_freed_memory()  # the network's activations: ~100 MB the masks and measurements would stack on
    min_area = min_area_px(plan.cfg.min_defect_area_px, scale_x, scale_y)
    seen = {
        "scale_x": round(scale_x, 6),
        "scale_y": round(scale_y, 6),
        "scale_from": why,
        "min_defect_area_px": min_area,
    }
    thin_min_elongation = float(plan.cfg.thin_min_elongation)
    kept = probabilities if probability_kind(plan.cfg) != "none" else None
    if plan.decoder is not None:
        labels, class_masks = plan.decoder.masks(probabilities, min_area)
        del probabilities  # only ``kept`` may hold the map from here on
        defects = plan.decoder.measure(class_masks, thin_min_elongation, mm_per_px)
        return Prediction(kept, labels, class_masks, defects, seen)
    if probabilities.shape[0] != 1:
        raise UserError(
            f"the model predicts {probabilities.shape[0]} channels but records no classes: a binary model has one"
        )
    mask = remove_small_components(probabilities[0] > plan.threshold, min_area)
    del probabilities
    defects = [
        {"type": DEFECT_TYPE, **add_millimetres(d, mm_per_px)} for d in measure_defects(mask, thin_min_elongation)
    ]
    return Prediction(None if kept is None else kept[0], mask, None, defects, seen)


def class_decoder(cfg: DictConfig, info: ModelInfo) -> ClassDecoder | None:
    """How a model with classes is decoded in this run (None for a binary model, whose class settings must not name
    classes it does not have)."""
    threshold = OmegaConf.to_container(cfg.threshold) if OmegaConf.is_list(cfg.threshold) else cfg.threshold
    linear = OmegaConf.to_container(cfg.classes.linear) if OmegaConf.is_list(cfg.classes.linear) else None
    if info.classes is None:
        if isinstance(threshold, list):
            raise UserError(f"threshold={threshold}: {info.source} is a binary model: give one threshold")
        if linear:
            raise UserError(
                f"classes.linear names {', '.join(map(str, linear))}, but {info.source} is a binary model (no "
                "classes): leave classes.linear out"
            )
        if cfg.classes.masks:
            log.warning("classes.masks=true: %s is a binary model; its one mask is masks/NAME.png", info.source)
        return None
    return ClassDecoder.for_model(info, threshold, linear)


def tile_layout(tiling: DictConfig, trained_size: int | None) -> tuple[int, int | None]:
    """(tile size, margin) for probability_map from the tiling settings.

    grid (default): tiles of tiling.tile_size px (default: the trained size) sharing tiling.overlap of a tile.
    fitted: as few tiles as cover the photo, each at most tiling.tile_size px (default MAX_TILE), neighbours sharing
    tiling.margin px; fewer pixels computed twice (17-32 % faster), but 1024 px tiles need ~1-1.7 GB more memory
    (docs/speed.md), so grid stays the default.
    """
    layout = str(tiling.layout)
    if layout == "fitted":
        return int(tiling.tile_size or MAX_TILE), int(tiling.margin)
    if layout == "grid":
        return int(tiling.tile_size or trained_size or 256), None
    raise ConfigError(f"tiling.layout must be fitted or grid, got {layout!r}")


@dataclass
class Plan:
    """What every photo of one run is predicted with."""

    cfg: DictConfig
    segmenter: Segmenter
    #: a binary model's threshold (a softmax model's on 1 - p(background)); a multilabel model's per-class list
    threshold: float | list[float]
    tile_size: int
    margin: int | None  # px neighbouring tiles share (the fitted layout); None: the grid layout
    scale: str | float
    mm_per_px: MillimetresPerPixel
    root: Path
    output_dir: Path
    #: how a model with classes is decoded; None for a binary model
    decoder: ClassDecoder | None = None


class PredictStopped(BaseException):
    """SIGTERM or Ctrl-C during predict: raised in the main thread so the summary is brought up to date first.

    A BaseException, like KeyboardInterrupt: a signal landing inside a photo's decoding must stop the run, not be
    caught by the reader's ``except Exception`` and recorded as an unreadable photo while the run goes on.
    """

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


def run_settings(cfg: DictConfig, with_classes: bool = False) -> dict[str, Any]:
    """The settings a summary is made with; a rerun into the same folder continues it only if they are the same
    (``classes`` only for a model with classes: a binary model's summary is as before classes existed)."""
    keys = (
        "input",
        "recursive",
        "scale",
        "mm_per_px",
        "mm_per_px_file",
        "min_defect_area_px",
        "thin_min_elongation",
        "tiling",
        "precision",
        "save",
        "overlay",
        *(("classes",) if with_classes else ()),
    )
    return {key: OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key] for key in keys}


def prepare(cfg: DictConfig) -> tuple[Plan, PredictionSummary, list[Path], list[str]]:
    """The photos, the model, the output folder and its summary (taken over from a stopped run of the same settings)."""
    mm_per_px = MillimetresPerPixel(cfg.mm_per_px, cfg.mm_per_px_file)
    output_dir = make_output_dir(cfg.output_dir, "output_dir")  # one line, not a traceback, when a file is in the way
    found = collect_inputs(str(cfg.input), bool(cfg.recursive))
    paths = [p for p in found if not p.resolve().is_relative_to(output_dir.resolve())]  # never our own outputs
    if not paths:
        raise UserError(f"input={cfg.input}: holds no photos outside output_dir={output_dir}")
    root = input_root(str(cfg.input), paths)
    segmenter = load_segmenter(cfg.checkpoint, str(cfg.device), str(cfg.get("precision", "32")))
    info = segmenter.info
    decoder = class_decoder(cfg, info)
    threshold: float | list[float] | None = float(cfg.threshold) if cfg.threshold is not None else info.threshold
    threshold_source = "threshold= (given)" if cfg.threshold is not None else info.threshold_source
    if decoder is not None:
        threshold = list(decoder.thresholds) if decoder.multilabel else decoder.thresholds[0]
    tile_size, margin = tile_layout(cfg.tiling, info.tile_size)
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed %s (half-written by a run that was killed)", stale)
    plan = Plan(
        cfg, segmenter, threshold, tile_size, margin, parse_scale(cfg.scale), mm_per_px, root, output_dir, decoder
    )
    model = {**info.to_dict(), "threshold": threshold, "threshold_source": threshold_source}
    model |= {"tile_size": tile_size, "tile_margin": margin}
    if decoder is not None:
        model.update(decoder.describe())
    summary = PredictionSummary(
        output_dir,
        model,
        run_settings(cfg, with_classes=decoder is not None),
        [str(p) for p in paths],
        class_columns=None if decoder is None else decoder.columns(),
    )
    taken_over = summary.take_over_previous()
    summary.write()  # from the start: a run killed before its first photo still leaves a valid summary
    if plan.scale == "auto" and not info.input_scale:
        log.warning(
            "%s does not record how its training photos were resized: photos are seen at scale=1; "
            "set scale=FACTOR (the training resize) or retrain with this version",
            info.source,
        )
    log.info(
        "%d photo(s) -> %s; model %s (%s)%s, threshold %s from %s, tiles %d px%s",
        len(paths),
        output_dir,
        info.source,
        info.runtime,
        "" if decoder is None else f", classes {', '.join(decoder.names)}{' (multilabel)' * decoder.multilabel}",
        f"{threshold:.2f}" if isinstance(threshold, float) else threshold,
        threshold_source,
        tile_size,
        f"; {taken_over} already done here by an earlier run of the same settings" if taken_over else "",
    )
    return plan, summary, paths, output_names(paths, root)


def predict_all(plan: Plan, summary: PredictionSummary, paths: list[Path], names: list[str]) -> None:
    """Every photo not done yet, in order, each recorded in the summary as soon as its files are written."""
    show = bool(plan.cfg.progress)
    progress = tqdm(total=len(paths), unit="photo", desc="predict", disable=not show, file=sys.stderr)
    tiles = tqdm(unit="tile", desc="  tiles", leave=False, position=1, disable=not show, file=sys.stderr)

    def show_tiles(done: int, total: int) -> None:  # a large photo takes minutes
        tiles.total = total
        tiles.update(done - tiles.n)

    try:
        for path, name in zip(paths, names):
            if not summary.is_done(str(path)):
                tiles.reset()
                predict_and_save(path, name, plan, summary, show_tiles)
            progress.update(1)
            if summary.failed:
                progress.set_postfix(failed=len(summary.failed))
    finally:
        tiles.close()
        progress.close()


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg, "predict")
    summary: PredictionSummary | None = None
    try:
        with stop_on_signals():
            plan, summary, paths, names = prepare(cfg)
            predict_all(plan, summary, paths, names)
            summary.finish()
    except PredictStopped as stop:
        what = "Ctrl-C" if stop.signal_number == signal.SIGINT else str(stop)
        if summary is None:
            raise RunInterrupted(f"{what} before the first photo: nothing was written", stop.signal_number) from None
        with signals_ignored():
            summary.write()
            write_html_report(summary, cfg)
        raise RunInterrupted(
            f"{what} after {len(summary.records)} of {len(summary.order)} photo(s): their files and the summary "
            f"(predictions.json, complete=false) are in {summary.output_dir}; run the same command again to continue",
            stop.signal_number,
        ) from None
    report = write_html_report(summary, cfg)

    log.info(
        "%d of %d photo(s) predicted -> %s%s",
        len(summary.records),
        len(paths),
        summary.csv_path,
        f", {report}" if report else "",
    )
    return {
        "images": len(paths),
        "predicted": len(summary.records),
        "failed": summary.ordered_failures(),
        "output_dir": str(summary.output_dir),
        "threshold": plan.threshold,
        "report": str(report) if report else None,
    }


def write_html_report(summary: PredictionSummary, cfg: DictConfig) -> Path | None:
    if not cfg.save.report:
        return None
    return write_report(summary, title=str(cfg.report.title))


def predict_and_save(
    path: Path, name: str, plan: Plan, summary: PredictionSummary, on_progress: Callable[[int, int], None]
) -> None:
    """One photo: predict, write its files, then record it in the summary (an unreadable one is recorded as failed)."""
    started = time.perf_counter()
    try:
        image = read_image(path)
    except DataError as error:
        tqdm.write(f"error: {error} (skipped)", file=sys.stderr)
        summary.fail(str(path), str(error))
        return
    mm_per_px, mm_from = plan.mm_per_px.lookup(path, relative_name(path, plan.root).as_posix())
    done = predict_one(image, plan, mm_per_px, on_progress)
    defects = done.defects
    if plan.decoder is None:
        files = save_photo_outputs(plan.output_dir, name, image, done.probabilities, done.mask, defects, plan.cfg)
    else:
        assert done.class_masks is not None
        files = save_class_outputs(
            plan.output_dir,
            name,
            image,
            done.probabilities,
            done.mask,
            done.class_masks,
            defects,
            plan.decoder,
            plan.cfg,
        )
    height, width = done.mask.shape
    per_class = {} if plan.decoder is None else {"classes": plan.decoder.per_class(defects, (height, width), mm_per_px)}
    summary.add(
        {
            "image": str(path),
            "status": "ok",
            "name": name,
            "width": width,
            "height": height,
            **add_millimetres(summarise(defects, (height, width)), mm_per_px),
            **per_class,
            "mm_per_px": mm_per_px,
            "mm_per_px_from": mm_from,
            **done.seen,
            "threshold": plan.threshold,
            "seconds": round(time.perf_counter() - started, 3),
            **relative_files(files, plan.output_dir),
            "components": defects,
        }
    )


@entry_point("predict")
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
