"""Predict on real photos: the scale the model sees each photo at, the smallest defect kept, per-photo mm per pixel,
measurements on the overlay and time per photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectseg.inference.overlay import defect_label
from defectseg.inference.runtime import ModelInfo
from defectseg.inference.scale import (
    MIN_MODEL_AREA_PX,
    MillimetresPerPixel,
    min_area_px,
    parse_scale,
    photo_scale,
    training_input_scale,
)
from defectseg.predict import run_predict
from defectseg.utils.errors import UserError


def test_training_input_scale_is_the_median_photo_resized_to_the_trained_size(tmp_path):
    for index, (width, height) in enumerate([(400, 300), (400, 300), (800, 600), (100, 80)]):
        Image.new("RGB", (width, height)).save(tmp_path / f"{index}.png")
    (tmp_path / "broken.png").write_bytes(b"not a photo")
    files = sorted(tmp_path.glob("*.png"))
    recorded = training_input_scale(files, 128)
    assert recorded == {
        "image_size": 128,
        "photo_width": 400.0,
        "photo_height": 300.0,
        "photos": 4,
        "x": 0.32,
        "y": pytest.approx(128 / 300, abs=1e-6),
    }
    assert training_input_scale([tmp_path / "broken.png"], 128) is None


def test_scale_auto_follows_training_fit_shrinks_each_photo_a_number_is_taken_as_given():
    recorded = {"image_size": 128, "photo_width": 256.0, "photo_height": 256.0, "x": 0.5, "y": 0.5}
    assert photo_scale("auto", recorded, 3456, 2304)[:2] == (0.5, 0.5)
    assert photo_scale("fit", recorded, 3456, 2304)[:2] == (128 / 3456, 128 / 2304)
    assert photo_scale(0.25, recorded, 3456, 2304)[:2] == (0.25, 0.25)
    x, y, why = photo_scale("auto", None, 3456, 2304)
    assert (x, y) == (1.0, 1.0) and "does not record" in why
    assert parse_scale("AUTO") == "auto" and parse_scale("0.25") == 0.25
    for bad in ("0", "-1", "big", "inf"):
        with pytest.raises(UserError, match="scale must be auto, fit or a positive factor"):
            parse_scale(bad)


def test_min_defect_area_auto_is_a_few_model_pixels_in_photo_pixels():
    assert min_area_px("auto", 1.0, 1.0) == MIN_MODEL_AREA_PX
    assert min_area_px("auto", 0.5, 0.5) == 4 * MIN_MODEL_AREA_PX  # the model sees the photo at half size
    assert min_area_px(0, 0.5, 0.5) == 0 and min_area_px("25", 1.0, 1.0) == 25
    with pytest.raises(UserError, match="min_defect_area_px"):
        min_area_px("-3", 1.0, 1.0)


def test_mm_per_px_file_gives_each_photo_its_scale_and_names_a_bad_line(tmp_path):
    table = tmp_path / "scales.csv"
    table.write_text("image,mm_per_px\nsite/a.jpg,0.1\nb.png,0.25\nother/b.png,0.5\nc.png,0.2\n")
    scales = MillimetresPerPixel(0.05, table)
    assert scales.lookup(tmp_path / "site" / "a.jpg", "site/a.jpg")[0] == 0.1  # path relative to the input folder
    assert scales.lookup(tmp_path / "x" / "c.png", "x/c.png")[0] == 0.2  # by file name, unique in the CSV
    assert scales.lookup(tmp_path / "x" / "b.png", "x/b.png") == (0.05, "mm_per_px=")  # b.png is ambiguous by name
    assert MillimetresPerPixel(None, None).lookup(tmp_path / "a.png", "a.png") == (None, "none")
    table.write_text("image,mm_per_px\na.png,0.1\nb.png,-2\n")
    with pytest.raises(UserError, match=r"scales.csv, line 3: .*'b.png', '-2'"):
        MillimetresPerPixel(None, table)
    table.write_text("photo,scale\na.png,0.1\n")
    with pytest.raises(UserError, match="needs the columns image,mm_per_px"):
        MillimetresPerPixel(None, table)
    with pytest.raises(UserError, match="mm_per_px must be positive"):
        MillimetresPerPixel(0, None)


def test_overlay_labels_say_each_defects_size():
    crack = {"id": 3, "area_px": 90, "length_px": 45.04, "mean_width_px": 2.0, "area_mm2": None}
    assert defect_label(crack) == "3: L 45.0px W 2.0px"
    crack_mm = {**crack, "area_mm2": 0.9, "length_mm": 4.504, "mean_width_mm": 0.2}
    assert defect_label(crack_mm) == "3: L 4.5mm W 0.2mm"
    blob = {"id": 1, "area_px": 1234, "length_px": None, "area_mm2": None}
    assert defect_label(blob) == "1: 1234px2"


class HalfScaleModel:
    """Dark pixels are defects; records the tile sizes it is shown."""

    info = ModelInfo(
        source="stand-in",
        runtime="numpy",
        threshold=0.5,
        tile_size=64,
        multiple=16,
        input_scale={"image_size": 64, "photo_width": 128.0, "photo_height": 128.0, "photos": 3, "x": 0.5, "y": 0.5},
    )

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.shapes.append(images.shape)
        return (images.mean(axis=1, keepdims=True) < 0.3).astype(np.float32)


def test_predict_sees_photos_at_the_training_scale_and_records_scale_size_and_time(
    compose_config, monkeypatch, tmp_path
):
    folder = tmp_path / "photos"
    (folder / "site").mkdir(parents=True)
    image = np.full((96, 128, 3), 200, np.uint8)
    image[20:60, 30:90] = 10  # a 40x60 defect
    image[80:84, 4:8] = 10  # a 4x4 speck: 16 photo px, 2x2 model px (under auto's 16)
    Image.fromarray(image).save(folder / "site" / "a.png")
    Image.fromarray(image).save(folder / "b.png")
    (tmp_path / "scales.csv").write_text("image,mm_per_px\nsite/a.png,0.1\n")
    model = HalfScaleModel()
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: model)
    cfg = compose_config(
        "predict",
        [f"input={folder}", "recursive=true", f"mm_per_px_file={tmp_path / 'scales.csv'}", "progress=false"],
    )
    out = Path(run_predict(cfg)["output_dir"])

    assert {shape[2:] for shape in model.shapes} == {(48, 64)}  # 96x128 photos shown at half size
    saved = json.loads((out / "predictions.json").read_text())
    by_name = {r["name"]: r for r in saved["images"]}
    assert set(by_name) == {"site/a", "b"}
    for record in by_name.values():
        assert (record["width"], record["height"]) == (128, 96)  # masks keep the photo's size
        assert (record["scale_x"], record["scale_y"]) == (0.5, 0.5) and record["scale_from"].startswith("auto")
        assert record["min_defect_area_px"] == 4 * MIN_MODEL_AREA_PX
        assert record["defects"] == 1 and record["components"][0]["area_px"] == 40 * 60  # the speck is dropped
        assert record["components"][0]["type"] == "defect"
        assert record["seconds"] > 0
    assert by_name["site/a"]["mm_per_px"] == 0.1 and by_name["site/a"]["defect_area_mm2"] == pytest.approx(24.0)
    assert by_name["b"]["mm_per_px"] is None and by_name["b"]["defect_area_mm2"] is None
    assert Image.open(out / "masks" / "site" / "a.png").size == (128, 96)
