"""Data set checks: the up-front pass every training run makes, and the full report of ``check_data``.

Training decodes every sample it will use before the first step (filling the image cache,
so the pass costs no extra decoding) and either stops with the list of problems or, with
``dataset.on_error=skip``, leaves the bad samples out and says which. ``python -m
defectseg.check_data`` runs the same pass over the whole set at full resolution and adds
what a person wants to see before trusting hand-labelled data: counts, sizes, modes, mask
value histograms, unpaired files, duplicate pictures across splits.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectseg.data.classes import IGNORE, ClassSpec
from defectseg.data.readers import SIXTEEN_BIT_MODES, DataError, read_image, read_mask

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
SHOWN = 20
# Checked per sample: (image array to compare for duplicates or None, the sample's problems).
Inspect = Callable[[Any], "tuple[np.ndarray | None, list[DataError]]"]


@dataclass(frozen=True)
class Problem:
    """One finding. ``sample`` is the image that identifies the sample (what ``on_error=skip`` leaves out)."""

    kind: str
    sample: str
    message: str
    split: str | None = None

    def __str__(self) -> str:
        return self.message


def sample_file(sample: Any) -> Path:
    """The image of a sample: ``(image, label)`` or ``(image, mask)``."""
    return Path(sample[0])


def inspect_samples(per_split: Mapping[str, Sequence[Any]], inspect: Inspect) -> list[Problem]:
    """Every sample through ``inspect``: its problems, and the same picture found in two splits."""
    problems: list[Problem] = []
    seen: dict[str, tuple[str, Path]] = {}
    for split, samples in per_split.items():
        for sample in samples:
            image, errors = inspect(sample)
            problems += [Problem(error.kind, str(sample_file(sample)), str(error), split) for error in errors]
            if image is None:
                continue
            digest = hashlib.blake2b(
                np.ascontiguousarray(image).tobytes() + str(image.shape).encode(), digest_size=16
            ).hexdigest()
            if digest in seen and seen[digest][0] != split:
                other_split, other = seen[digest]
                problems.append(
                    Problem(
                        "duplicate",
                        str(sample_file(sample)),
                        f"{sample_file(sample)} ({split}) is the same picture as {other} ({other_split}): "
                        "the split leaks",
                        split,
                    )
                )
            seen.setdefault(digest, (split, sample_file(sample)))
    return problems


WARNING_KINDS = (
    "duplicate",
    "mask_without_image",
    "exif_orientation",
    "transparency",
    "soft_edges",
    "void_ignored",
    "bit_depth",
)


def is_error(problem: Problem) -> bool:
    """Errors make a sample unusable; warnings (duplicates, orphan masks, EXIF rotation...) are reported only."""
    return problem.kind not in WARNING_KINDS


def apply_on_error(
    per_split: Mapping[str, Sequence[Any]], problems: Sequence[Problem], on_error: str, where: Path
) -> tuple[dict[str, list[Any]], list[Problem]]:
    """``raise``: stop with the list of errors. ``skip``: the samples without errors, and the errors skipped."""
    for warning in (p for p in problems if not is_error(p)):
        log.warning("data: %s", warning)
    errors = [p for p in problems if is_error(p)]
    if errors and on_error == "raise":
        raise DataError(
            f"{len(errors)} problem(s) in {where}, nothing was trained "
            "(dataset.on_error=skip leaves these samples out; "
            f"python -m defectseg.check_data dataset=... lists everything):\n  " + _listing(errors),
            kind="layout",
        )
    bad = {p.sample for p in errors}
    kept = {split: [s for s in samples if str(sample_file(s)) not in bad] for split, samples in per_split.items()}
    if errors:
        log.warning(
            "data: skipping %d sample(s) of %s (dataset.on_error=skip):\n  %s", len(bad), where, _listing(errors)
        )
        empty = [split for split in ("train", "val") if split in kept and not kept[split]]
        if empty:
            raise DataError(
                f"{where}: no usable {' or '.join(empty)} samples left after skipping {len(bad)} bad one(s)",
                kind="layout",
            )
    return kept, errors


def _listing(problems: Sequence[Problem]) -> str:
    shown = "\n  ".join(str(p) for p in problems[:SHOWN])
    return shown + (f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")


# --- the full report: python -m defectseg.check_data ------------------------------------------


class _Tally:
    """What the report counts, filled file by file."""

    def __init__(self) -> None:
        self.image_sizes: Counter[str] = Counter()
        self.image_modes: Counter[str] = Counter()
        self.image_formats: Counter[str] = Counter()
        self.channels: Counter[int] = Counter()
        self.mask_modes: Counter[str] = Counter()
        self.mask_values: Counter[int] = Counter()
        self.empty_masks = 0
        self.defect_fractions: list[float] = []
        self.mask_policy: Counter[str] = Counter()  # how each mask file was read (0/255, soft edges, indices...)
        self.class_pixels: dict[str, Counter[str]] = {}  # split -> class -> pixels
        self.class_images: dict[str, Counter[str]] = {}  # split -> class -> images that carry it

    def describe(self, path: Path, is_mask: bool) -> list[DataError]:
        """Header facts (mode, size, format, EXIF rotation, transparency); problems here are warnings."""
        warnings: list[DataError] = []
        try:
            with Image.open(path) as image:
                modes, size = (
                    (self.mask_modes, None) if is_mask else (self.image_modes, f"{image.width}x{image.height}")
                )
                modes[image.mode] += 1
                if not is_mask and image.mode in SIXTEEN_BIT_MODES:
                    peak = int(np.asarray(image).max()) if image.width and image.height else 0
                    if 255 < peak <= 4095:
                        warnings.append(
                            DataError(
                                f"{path}: 16-bit image whose values stop at {peak} (12-bit data?): read on the 16-bit "
                                f"scale it is near-black (max {peak * 255 // 65535} of 255); rescale it to 16 or 8 bit",
                                kind="bit_depth",
                            )
                        )
                if size:
                    self.image_sizes[size] += 1
                    self.image_formats[image.format or "?"] += 1
                    self.channels[len(image.getbands())] += 1
                    orientation = image.getexif().get(0x0112, 1)
                    if orientation not in (None, 1):
                        warnings.append(
                            DataError(
                                f"{path}: EXIF orientation {orientation}: the pixels are read as stored, "
                                "not rotated; check its mask lines up",
                                kind="exif_orientation",
                            )
                        )
                    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                        alpha = np.asarray(image.convert("RGBA"))[..., 3]
                        if alpha.size and alpha.min() < 255:
                            warnings.append(
                                DataError(
                                    f"{path}: has transparent pixels; the alpha channel is dropped "
                                    "and they keep their stored colour",
                                    kind="transparency",
                                )
                            )
        except Exception:
            pass
        return warnings

    def count_mask(
        self,
        path: Path | None,
        loaded: np.ndarray,
        split: str | None = None,
        spec: ClassSpec | None = None,
        mode: str = "binary",
    ) -> list[DataError]:
        """Value histogram of the mask file as stored (of the decoded mask when there is no file, e.g. RLE), how it
        was read, class counts per split; returns what a person should know about this file (warnings)."""
        if path is None:
            raw = loaded
        else:
            with Image.open(path) as image:
                raw = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA") else image)
        values, counts = np.unique(raw, return_counts=True)
        self.mask_values.update({int(v): int(c) for v, c in zip(values, counts)})
        ignored = loaded == IGNORE
        defect = (loaded > 0) & ~ignored
        fraction = float(defect.sum()) / max(1, int((~ignored).sum())) if loaded.size else 0.0
        self.empty_masks += fraction == 0.0
        self.defect_fractions.append(fraction)
        found: list[DataError] = []
        where = path if path is not None else "mask"
        if spec is not None:
            layers = spec.class_layers(loaded).reshape(spec.num_classes, -1).sum(axis=1)
            pixels = self.class_pixels.setdefault(split or "all", Counter())
            images = self.class_images.setdefault(split or "all", Counter())
            for name, count in zip(spec.names, layers.tolist()):
                pixels[name] += int(count)
                images[name] += int(count > 0)
            self.mask_policy[f"class labels ({mode})"] += 1
        elif mode != "binary" or path is None:
            self.mask_policy["class indices" if mode == "classes" else "run-length rows"] += 1
        else:
            peak = int(values.max()) if values.size else 0
            between = int(counts[(values > 0) & (values < peak)].sum()) if peak > 1 else 0
            if set(values.tolist()) <= {0, 1}:
                self.mask_policy["binary 0/1"] += 1
            elif between == 0:
                self.mask_policy[f"binary 0/{peak}"] += 1
            else:
                self.mask_policy["binary, soft edges thresholded"] += 1
                found.append(
                    DataError(
                        f"{where}: {between} pixels ({100 * between / max(1, int((raw > 0).sum())):.1f}% of its marked "
                        f"ones) between 0 and {peak}: soft edges, thresholded at half range",
                        kind="soft_edges",
                    )
                )
        if ignored.any():
            self.mask_policy["with ignored (void) pixels"] += 1
            found.append(
                DataError(
                    f"{where}: {int(ignored.sum())} void pixels ({100 * ignored.mean():.1f}%) "
                    "are ignored in loss and metrics",
                    kind="void_ignored",
                )
            )
        return found


def _inspector(tally: _Tally, segmentation: bool, split_of: Mapping[str, str], spec: ClassSpec | None) -> Inspect:
    def inspect(sample: Any) -> tuple[np.ndarray | None, list[DataError]]:
        image_path = sample_file(sample)
        found = tally.describe(image_path, is_mask=False)
        image = None
        try:
            image = read_image(image_path)
        except DataError as error:
            found.append(error)
        if segmentation:
            mask = sample[1]  # a layout's mask: a file, or e.g. run-length rows of a CSV
            mask_path = getattr(mask, "path", None)
            if mask_path is not None:
                found += tally.describe(Path(mask_path), is_mask=True)
            try:
                expected = image.shape[:2] if image is not None else _header_size(image_path)
                loaded = mask.load(expected) if hasattr(mask, "load") else read_mask(mask, expected_size=expected)
                found += tally.count_mask(
                    None if mask_path is None else Path(mask_path),
                    loaded,
                    split_of.get(str(image_path)),
                    spec,
                    getattr(getattr(mask, "values", None), "mode", "binary"),
                )
            except DataError as error:
                found.append(error)
        return image, found

    return inspect


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:
        return None


def check_dataset(datamodule: Any) -> dict[str, Any]:
    """Scan a DataModule's whole data set (all splits, no label budget) into a JSON-ready report."""
    per_split, problems = datamodule.list_samples()
    segmentation = datamodule.task == "segmentation"
    tally = _Tally()
    spec = getattr(datamodule, "labels", None) if segmentation else None
    split_of = {str(sample_file(s)): split for split, samples in per_split.items() for s in samples}
    problems = list(problems) + inspect_samples(per_split, _inspector(tally, segmentation, split_of, spec))
    errors = [p for p in problems if is_error(p)]
    report: dict[str, Any] = {
        "dataset": datamodule.name,
        "root": str(datamodule.root),
        "task": datamodule.task,
        "counts": {
            **{split: len(samples) for split, samples in per_split.items()},
            "total": sum(len(s) for s in per_split.values()),
        },
        "images": {
            "sizes": dict(tally.image_sizes.most_common()),
            "modes": dict(tally.image_modes.most_common()),
            "channels": {str(k): v for k, v in sorted(tally.channels.items())},
            "formats": dict(tally.image_formats.most_common()),
        },
        "errors": [asdict(p) for p in errors],
        "warnings": [asdict(p) for p in problems if not is_error(p)],
        "samples_with_errors": len({p.sample for p in errors}),
        "trainable": not errors or datamodule.on_error == "skip",
    }
    if segmentation:
        fractions = tally.defect_fractions
        report["masks"] = {
            "modes": dict(tally.mask_modes.most_common()),
            "values": {str(k): v for k, v in sorted(tally.mask_values.items())},
            "empty": tally.empty_masks,
            "mean_defect_fraction": round(float(np.mean(fractions)), 6) if fractions else None,
            "read_as": dict(tally.mask_policy.most_common()),
        }
        if spec is not None:
            report["classes"] = {
                split: {
                    name: {
                        "pixels": tally.class_pixels.get(split, {}).get(name, 0),
                        "images": tally.class_images.get(split, {}).get(name, 0),
                    }
                    for name in spec.names
                }
                for split in per_split
            }
    else:
        names = datamodule.class_names
        report["classes"] = {
            names[label]: count
            for label, count in sorted(Counter(label for samples in per_split.values() for _, label in samples).items())
        }
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a person reads it."""
    counts = report["counts"]
    lines = [
        f"data set {report['dataset']} ({report['task']}) at {report['root']}",
        f"  samples: {counts['total']} ("
        + ", ".join(f"{split} {n}" for split, n in counts.items() if split != "total")
        + ")",
    ]
    if "classes" in report and report["task"] != "segmentation":
        lines.append("  classes: " + ", ".join(f"{name} {n}" for name, n in report["classes"].items()))
    images = report["images"]
    lines.append("  image sizes: " + _top(images["sizes"]))
    lines.append("  image modes: " + _top(images["modes"]) + "; formats: " + _top(images["formats"]))
    if "masks" in report:
        masks = report["masks"]
        total = sum(masks["values"].values()) or 1
        values = ", ".join(
            f"{v}: {100 * n / total:.2f}%" for v, n in sorted(masks["values"].items(), key=lambda kv: -kv[1])[:6]
        )
        lines.append(
            f"  mask modes: {_top(masks['modes'])}; pixel values: {values}{' ...' if len(masks['values']) > 6 else ''}"
        )
        lines.append(
            f"  masks without any defect: {masks['empty']}; "
            f"mean defect area: {100 * (masks['mean_defect_fraction'] or 0):.2f}%"
        )
        lines.append("  masks read as: " + _top(masks.get("read_as", {})))
        for split, classes in report.get("classes", {}).items():
            lines.append(
                f"  classes in {split} (images, pixels): "
                + ", ".join(f"{name} {c['images']}, {c['pixels']}" for name, c in classes.items())
            )
    for title, entries in (
        ("errors (training stops on these; dataset.on_error=skip leaves the samples out)", report["errors"]),
        ("warnings", report["warnings"]),
    ):
        if entries:
            lines.append(f"  {title}: {len(entries)}")
            lines += [f"    [{e['kind']}] {e['message']}" for e in entries[:SHOWN]]
            if len(entries) > SHOWN:
                lines.append(f"    ... and {len(entries) - SHOWN} more (all in the JSON report)")
    if not report["errors"] and not report["warnings"]:
        lines.append("  no problems found")
    return "\n".join(lines)


def _top(counter: Mapping[str, int], n: int = 5) -> str:
    items = list(counter.items())
    text = ", ".join(f"{key} x{count}" for key, count in items[:n])
    return (text + (f", ... ({len(items) - n} more)" if len(items) > n else "")) or "none"
