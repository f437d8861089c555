"""Predict and export for models with defect classes (dataset.classes): palette masks, per-class masks, overlays
with a legend, measurements per class (defects.csv), multilabel thresholds, ONNX parity; binary output unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from defectseg.inference.runtime import ModelInfo
from defectseg.predict import run_predict

# --- binary models: outputs byte for byte as before classes existed --------------------------------------------------


class SoftDarkIsDefect:
    """A stand-in binary model: probability falls with brightness (soft, so the threshold matters)."""

    info = ModelInfo(source="stand-in", runtime="numpy", threshold=0.4, tile_size=64, multiple=16)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - images.mean(axis=1, keepdims=True) * 1.6, 0.0, 1.0).astype(np.float32)


def binary_photo() -> np.ndarray:
    image = np.full((150, 170, 3), 210, np.uint8)
    image[40:44, 10:160] = 20  # a crack
    image[90:120, 30:70] = 60  # a blob
    image[130:133, 100:103] = 100  # a speck below the default minimum area
    return image


def normalised_outputs(out: Path, tmp: Path) -> dict[str, str]:
    """sha256 of every file predict writes for a photo, the summary files without their timings and paths."""
    hashes = {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("masks/p.png", "overlays/p.png", "probabilities/p.png", "previews/overlays/p.jpg")
    }
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    for row in rows:
        row.pop("seconds")
        row["image"] = row["image"].replace(str(tmp), "TMP")
    hashes["predictions.csv"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    summary = json.loads((out / "predictions.json").read_text())
    for record in summary["images"]:
        record.pop("seconds")
    text = json.dumps(summary, sort_keys=True).replace(str(tmp), "TMP")
    hashes["predictions.json"] = hashlib.sha256(text.encode()).hexdigest()
    hashes["files"] = ",".join(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()))
    return hashes


#: taken from the code before classes existed (main at 2eecab6) with the same photo and stand-in model
BINARY_PIN = {
    "masks/p.png": "7a4c1fb9ef8fc33ac16fb718641a337593b3226ae71919282270b61b70bcd2a4",
    "overlays/p.png": "75efe75e4ee4ec6b5dd21574e46ac650e6e7157b711edffc771263866f195d47",
    "probabilities/p.png": "29ef6da92efc7e3ed8e499deda69b6b08a1564d51293a8b7e3b9cd5015cc5441",
    "previews/overlays/p.jpg": "8e7bf267d6b22e884655c177b1a62c76a3096c3086602bbfe2fec43267d5d8e0",
    "predictions.csv": "c39c5a454df3a3487ad60a20e5f17d3014073eb60ee1f5f4d737f77675a511bb",
    "predictions.json": "6de3b3baa44be6d41c806910f5d078baab87b6bcc8698321591ca9749065ddfa",
    "files": "masks/p.png,overlays/p.png,predictions.csv,predictions.json,previews/overlays/p.jpg,"
    "previews/photos/p.jpg,probabilities/p.png,report.html",
}


def test_binary_outputs_are_byte_identical_to_before_classes(compose_config, monkeypatch, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(binary_photo()).save(tmp_path / "in" / "p.png")
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: SoftDarkIsDefect())
    out = tmp_path / "out"
    overrides = [f"input={tmp_path / 'in'}", f"output_dir={out}", "mm_per_px=0.2", "save.probability=png"]
    run_predict(compose_config("predict", [*overrides, "progress=false"]))
    got = normalised_outputs(out, tmp_path)
    assert got == BINARY_PIN
