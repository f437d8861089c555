"""Predict and export for models with defect classes (dataset.classes): palette masks, per-class masks, overlays
with a legend, measurements per class (defects.csv), multilabel thresholds, ONNX parity; binary output unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
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
    # keys added after the pin (#20's tiling layouts and precision), at the values that reproduce the pinned run
    assert summary["model"].pop("tile_margin") is None and summary["settings"].pop("precision") in ("32", 32)
    assert summary["settings"]["tiling"].pop("layout") == "grid" and summary["settings"]["tiling"].pop("margin")
    text = json.dumps(summary, sort_keys=True).replace(str(tmp), "TMP")
    hashes["predictions.json"] = hashlib.sha256(text.encode()).hexdigest()
    hashes["files"] = ",".join(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()))
    return hashes


#: taken from the code before classes existed (main at 2eecab6) with the same photo and stand-in model; the overlay
#: and its preview since outlines are found by erosion, not traced contours (2026-12-07)
BINARY_PIN = {
    "masks/p.png": "7a4c1fb9ef8fc33ac16fb718641a337593b3226ae71919282270b61b70bcd2a4",
    "overlays/p.png": "7c96545361ea34f9d9e8bc97426d6edd4c44c95360cde523c0e6053ebc1a849a",
    "probabilities/p.png": "29ef6da92efc7e3ed8e499deda69b6b08a1564d51293a8b7e3b9cd5015cc5441",
    "previews/overlays/p.jpg": "f175dba23f0d7b0cf693c1b4022d90d575e0f7ff722fedf41108a8c6442ba5c1",
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
    run_predict(compose_config("predict", [*overrides, "progress=false", "tiling.layout=grid"]))
    got = normalised_outputs(out, tmp_path)
    assert got == BINARY_PIN


# --- a stand-in model with classes: the probability map is made by hand from the photo's colours ------------------

CRACK_ROWS, CRACK_COLS = slice(40, 44), slice(10, 160)  # 4 x 150 px: a linear class
BLOB_ROWS, BLOB_COLS = slice(90, 120), slice(30, 70)  # 30 x 40 px corrosion: area only
PIT_ROWS, PIT_COLS = slice(130, 136), slice(150, 156)  # 6 x 6 px pit
SPECK_ROWS, SPECK_COLS = slice(10, 12), slice(180, 182)  # 2 x 2 px corrosion: below the minimum area
CLASSES = ["crack", "corrosion", "pit"]


def class_photo() -> np.ndarray:
    image = np.full((160, 200, 3), 200, np.uint8)
    image[CRACK_ROWS, CRACK_COLS] = (0, 0, 0)
    image[BLOB_ROWS, BLOB_COLS] = (255, 0, 0)
    image[PIT_ROWS, PIT_COLS] = (0, 0, 255)
    image[SPECK_ROWS, SPECK_COLS] = (255, 0, 0)
    return image


def colour_probabilities(images: np.ndarray) -> np.ndarray:
    """N x 3 x h x w -> N x 3 x h x w per-class probabilities: black is crack, red corrosion, blue pit (0.8 each)."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    crack = (r < 0.1) & (g < 0.1) & (b < 0.1)
    corrosion = (r > 0.9) & (g < 0.1) & (b < 0.1)
    pit = (r < 0.1) & (g < 0.1) & (b > 0.9)
    return np.stack([crack, corrosion, pit], axis=1).astype(np.float32) * np.float32(0.8) + np.float32(0.05)


class SoftmaxStandIn:
    """Background + 3 channels summing to 1."""

    info = ModelInfo(source="softmax stand-in", runtime="numpy", tile_size=64, multiple=16, classes=CLASSES)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        classes = colour_probabilities(images)
        classes /= np.maximum(classes.sum(axis=1, keepdims=True), 1.0)
        return np.concatenate([1.0 - classes.sum(axis=1, keepdims=True), classes], axis=1)


def run_stand_in(compose_config, monkeypatch, tmp_path, model, *overrides) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    Image.fromarray(class_photo()).save(tmp_path / "in" / "p.png")
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: model)
    out = tmp_path / "out"
    cfg = compose_config("predict", [f"input={tmp_path / 'in'}", f"output_dir={out}", "progress=false", *overrides])
    run_predict(cfg)
    return out


def expected_labels() -> np.ndarray:
    labels = np.zeros((160, 200), np.uint8)
    labels[CRACK_ROWS, CRACK_COLS] = 1
    labels[BLOB_ROWS, BLOB_COLS] = 2
    labels[PIT_ROWS, PIT_COLS] = 3
    return labels


def test_softmax_model_writes_a_palette_mask_and_per_class_masks(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn(), "classes.masks=true")
    mask = Image.open(out / "masks" / "p.png")
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask), expected_labels())  # the 2x2 speck is gone (min area 16)
    palette = mask.getpalette()
    assert palette[:12] == [0, 0, 0, 230, 159, 0, 86, 180, 233, 0, 158, 115]  # black, then Okabe-Ito
    for k, name in enumerate(CLASSES, start=1):
        class_mask = np.asarray(Image.open(out / "class_masks" / name / "p.png"))
        np.testing.assert_array_equal(class_mask, (expected_labels() == k).astype(np.uint8) * 255)
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    assert record["class_masks"] == {name: f"class_masks/{name}/p.png" for name in CLASSES}


def test_without_classes_masks_no_class_masks_are_written(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn())
    assert not (out / "class_masks").exists() and (out / "masks" / "p.png").is_file()


def test_measurements_per_class_in_csv_json_and_defects_csv(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn(), "mm_per_px=0.5")
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert (row["crack_defects"], row["corrosion_defects"], row["pit_defects"]) == ("1", "1", "1")
    assert (row["crack_area_px"], row["corrosion_area_px"], row["pit_area_px"]) == ("600", "1200", "36")
    assert float(row["corrosion_area_mm2"]) == pytest.approx(300.0)
    assert float(row["crack_length_px"]) == pytest.approx(150, rel=0.03)
    assert float(row["crack_length_mm"]) == pytest.approx(75, rel=0.03)
    assert "corrosion_length_px" not in row and "pit_max_width_px" not in row  # area-only classes
    assert row["defects"] == "3" and row["defect_area_px"] == str(600 + 1200 + 36)

    defects = list(csv.DictReader((out / "defects.csv").open()))
    assert [(d["id"], d["class"], d["area_px"]) for d in defects] == [
        ("1", "corrosion", "1200"),
        ("2", "crack", "600"),
        ("3", "pit", "36"),
    ]
    corrosion, crack, pit = defects
    assert (corrosion["bbox_x"], corrosion["bbox_y"], corrosion["bbox_width"], corrosion["bbox_height"]) == (
        "30",
        "90",
        "40",
        "30",
    )
    assert corrosion["length_px"] == corrosion["max_width_px"] == pit["mean_width_px"] == ""
    assert float(crack["length_px"]) == pytest.approx(150, rel=0.03)
    assert float(crack["mean_width_px"]) == pytest.approx(4.0, abs=0.2)
    assert float(crack["mean_width_mm"]) == pytest.approx(2.0, abs=0.1)
    assert Path(crack["image"]).name == "p.png" and crack["name"] == "p"

    summary = json.loads((out / "predictions.json").read_text())
    model = summary["model"]
    assert model["classes"] == CLASSES and model["multilabel"] is False and model["threshold"] == 0.5
    assert model["linear_classes"] == ["crack"] and model["mask_values"] == {"crack": 1, "corrosion": 2, "pit": 3}
    assert model["channels"] == ["background", *CLASSES]
    per_class = summary["images"][0]["classes"]
    assert per_class["crack"]["defects"] == 1 and per_class["corrosion"]["area_px"] == 1200
    assert "length_px" not in per_class["corrosion"] and per_class["pit"]["area_mm2"] == pytest.approx(9.0)
    assert [c["type"] for c in summary["images"][0]["components"]] == ["corrosion", "crack", "pit"]

    report = (out / "report.html").read_text()
    assert report.count('class="swatch"') == 3 and "background:#56b4e9" in report  # corrosion's sky blue
    assert "classes crack, corrosion, pit (softmax)" in report


def test_overlay_has_one_colour_per_class_and_a_legend_below(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn(), "overlay.labels=false")
    overlay = np.asarray(Image.open(out / "overlays" / "p.png")).astype(int)
    assert overlay.shape[1] == 200 and overlay.shape[0] > 160  # the legend strip is added underneath
    alpha = 0.45
    blob = overlay[105, 50]  # red photo pixel tinted sky blue
    np.testing.assert_allclose(blob, np.array([255, 0, 0]) * (1 - alpha) + np.array([86, 180, 233]) * alpha, atol=1)
    pit = overlay[133, 153]  # blue pixel tinted bluish green
    np.testing.assert_allclose(pit, np.array([0, 0, 255]) * (1 - alpha) + np.array([0, 158, 115]) * alpha, atol=1)
    np.testing.assert_array_equal(overlay[5, 5], [200, 200, 200])  # the photo elsewhere is untouched
    legend = overlay[160:]
    for color in ((230, 159, 0), (86, 180, 233), (0, 158, 115)):  # a swatch of every class colour
        assert (legend == color).all(axis=2).sum() >= 25


def test_linear_classes_are_measured_for_length_the_others_for_area(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn(), "classes.linear=[corrosion]")
    defects = {d["class"]: d for d in csv.DictReader((out / "defects.csv").open())}
    assert defects["crack"]["length_px"] == "" and defects["crack"]["max_width_px"] == ""
    assert float(defects["corrosion"]["length_px"]) > 0 and float(defects["corrosion"]["max_width_px"]) > 0
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert "corrosion_length_px" in row and "crack_length_px" not in row


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("classes.linear=[crack,rust]", r"classes\.linear names rust.*crack, corrosion, pit"),
        ("threshold=[0.4,0.5]", r"threshold=\[0\.4, 0\.5\]: a softmax model .* takes one defect threshold"),
        ("classes.linear=crack", r"classes\.linear=crack: give null"),
        ("classes.masks=maybe", r"classes\.masks must be true or false"),
    ],
)
def test_bad_class_settings_are_one_line_naming_the_key(compose_config, monkeypatch, tmp_path, override, message):
    from defectseg.utils.errors import UserError

    with pytest.raises(UserError, match=message) as caught:
        run_stand_in(compose_config, monkeypatch, tmp_path, SoftmaxStandIn(), override)
    assert "\n" not in str(caught.value)


def test_a_binary_model_refuses_class_names(compose_config, monkeypatch, tmp_path):
    from defectseg.utils.errors import UserError

    with pytest.raises(UserError, match=r"classes\.linear names crack.*binary model"):
        run_stand_in(compose_config, monkeypatch, tmp_path, SoftDarkIsDefect(), "classes.linear=[crack]")


# --- multilabel: one sigmoid and one threshold per class ----------------------------------------------------------


class MultilabelStandIn:
    """Crack probability 0.5 on the (red) blob, corrosion 0.4 on the (blue) pit, both (0.9, 0.5) on the (black)
    crack line."""

    def __init__(self, thresholds: list[float]) -> None:
        self.info = ModelInfo(
            source="multilabel stand-in",
            runtime="numpy",
            tile_size=64,
            multiple=16,
            classes=["crack", "corrosion"],
            multilabel=True,
            class_thresholds=thresholds,
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        black, red, blue = (colour_probabilities(images)[:, k] > 0.5 for k in range(3))
        probabilities = np.full((images.shape[0], 2, *images.shape[2:]), 0.05, np.float32)
        probabilities[:, 0][red] = 0.5
        probabilities[:, 1][blue] = 0.4
        probabilities[:, 0][black] = 0.9
        probabilities[:, 1][black] = 0.5
        return probabilities


def test_multilabel_uses_per_class_thresholds_and_keeps_overlaps(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(compose_config, monkeypatch, tmp_path, MultilabelStandIn([0.6, 0.3]), "classes.masks=true")
    crack = np.asarray(Image.open(out / "class_masks" / "crack" / "p.png")) > 0
    corrosion = np.asarray(Image.open(out / "class_masks" / "corrosion" / "p.png")) > 0
    labels = np.asarray(Image.open(out / "masks" / "p.png"))
    line, pit = np.zeros_like(crack), np.zeros_like(crack)
    line[CRACK_ROWS, CRACK_COLS] = True
    pit[PIT_ROWS, PIT_COLS] = True
    np.testing.assert_array_equal(crack, line)  # not the blob: 0.5 is below crack's 0.6
    np.testing.assert_array_equal(corrosion, line | pit)  # the pit's 0.4 is above corrosion's 0.3
    expected = np.where(line, 1, np.where(pit, 2, 0))  # on the line, the more probable of its two classes
    np.testing.assert_array_equal(labels, expected)
    model = json.loads((out / "predictions.json").read_text())["model"]
    assert model["class_thresholds"] == [0.6, 0.3] and model["channels"] == ["crack", "corrosion"]
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert (row["crack_defects"], row["corrosion_defects"], row["corrosion_area_px"]) == ("1", "2", str(600 + 36))


def test_multilabel_threshold_given_overrides_every_class(compose_config, monkeypatch, tmp_path):
    out = run_stand_in(
        compose_config, monkeypatch, tmp_path, MultilabelStandIn([0.6, 0.3]), "classes.masks=true", "threshold=0.45"
    )
    crack = np.asarray(Image.open(out / "class_masks" / "crack" / "p.png")) > 0
    corrosion = np.asarray(Image.open(out / "class_masks" / "corrosion" / "p.png")) > 0
    assert crack[BLOB_ROWS, BLOB_COLS].all() and not corrosion[PIT_ROWS, PIT_COLS].any()
    assert json.loads((out / "predictions.json").read_text())["model"]["class_thresholds"] == [0.45, 0.45]


def test_multilabel_threshold_list_must_have_one_per_class(compose_config, monkeypatch, tmp_path):
    from defectseg.utils.errors import UserError

    with pytest.raises(UserError, match=r"give one value or 2, one per class"):
        run_stand_in(compose_config, monkeypatch, tmp_path, MultilabelStandIn([0.5, 0.5]), "threshold=[0.2,0.3,0.4]")


def test_checkpoint_classes_reads_the_per_class_thresholds_stage_2_tuned():
    from defectseg.inference.runtime import TUNED_THRESHOLD_KEY
    from defectseg.inference.torch_runtime import checkpoint_classes

    hyper = {"classes": ["crack", "pit"], "multilabel": True, "threshold": 0.5}
    tuned = {TUNED_THRESHOLD_KEY: {"best_threshold_per_class": [0.3, 0.7]}}
    assert checkpoint_classes({"hyper_parameters": hyper, **tuned}, 0.5)["class_thresholds"] == [0.3, 0.7]
    assert checkpoint_classes({"hyper_parameters": hyper}, 0.5)["class_thresholds"] == [0.5, 0.5]
    softmax = checkpoint_classes({"hyper_parameters": {"classes": ["crack"]}}, 0.5)
    assert softmax == {"classes": ["crack"], "multilabel": False, "class_thresholds": None}
    assert checkpoint_classes({"hyper_parameters": {"threshold": 0.5}}, 0.5) == {}


def test_tiles_blend_every_channel():
    """A pixelwise C-channel model comes out of any tiling unchanged, at any scale the photo is seen at."""
    from defectseg.inference.tiling import probability_maps

    image = class_photo()
    whole = SoftmaxStandIn()(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)[0]
    tiled = probability_maps(image, SoftmaxStandIn(), tile_size=48, overlap=0.25, batch_size=3, multiple=16)
    assert tiled.shape == (4, 160, 200)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert probability_maps(image, SoftmaxStandIn(), tile_size=48, multiple=16, scale=0.5).shape == (4, 160, 200)


# --- end to end: stage 1 -> stage 2 with classes -> predict -> export -> predict with the ONNX model --------------


def test_end_to_end_stage1_stage2_with_classes_predict_and_export(compose_config, classification_set, tmp_path):
    import onnxruntime as ort

    from defectseg.export import run_export
    from defectseg.finetune import run_finetune
    from defectseg.pretrain import run_pretrain
    from tests.helpers import stage1_overrides
    from tests.test_classes import classes_overrides, write_class_set

    small = "model.channels=[8,16,32]"
    run_pretrain(compose_config("pretrain", [*stage1_overrides(classification_set), small], run_name="s1"))
    class_set = write_class_set(tmp_path / "class_set")
    metrics = run_finetune(compose_config("finetune", [*classes_overrides(class_set, "encoder"), small], run_name="s2"))
    assert metrics["classes"] == ["crack", "corrosion"] and metrics["pretrained_encoder"]

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate(((32, 32), (45, 70))):
        Image.fromarray(class_photo()[: size[0], : size[1]] if i else class_photo()[::5, ::5]).save(photos / f"{i}.png")
    cfg = compose_config("predict", [f"input={photos}", "progress=false", "save.probability=npy"], run_name="pred")
    summary = run_predict(cfg)
    assert summary["predicted"] == 2
    out = Path(cfg.output_dir)
    saved = json.loads((out / "predictions.json").read_text())
    # softmax: the defect threshold stage 2 tuned on validation, as its test Dice was measured
    assert summary["threshold"] == metrics["best_threshold"] and 0 < metrics["best_threshold"] < 1
    assert saved["model"]["threshold_source"].startswith("tuned on validation Dice")
    assert saved["model"]["classes"] == ["crack", "corrosion"] and saved["model"]["runtime"] == "torch"
    probabilities = np.load(out / "probabilities" / "1.npy")
    assert probabilities.shape == (3, 45, 70)  # background + 2 classes, blended over the tiles
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    mask = np.asarray(Image.open(out / "masks" / "1.png"))
    assert mask.shape == (45, 70) and set(np.unique(mask).tolist()) <= {0, 1, 2}
    assert (out / "defects.csv").is_file()

    export_cfg = compose_config("export", [f"checkpoint={metrics['output_dir']}"], run_name="exp")
    report = run_export(export_cfg)
    for name in ("onnx", "torchscript"):
        assert report["exported"][name]["ok"], report["exported"][name]
    assert report["check"]["shapes"][0] == [1, 3, 32, 32]
    onnx_path = report["exported"]["onnx"]["path"]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    stored = json.loads(session.get_modelmeta().custom_metadata_map["defectseg"])
    assert stored["classes"] == ["crack", "corrosion"] and stored["multilabel"] is False
    assert stored["class_thresholds"] is None
    output = session.run(None, {"images": np.random.default_rng(0).random((2, 3, 32, 48), dtype=np.float32)})[0]
    assert output.shape == (2, 3, 32, 48)  # N x (background + C) x H x W

    onnx_cfg = compose_config(
        "predict", [f"input={photos}", "progress=false", f"checkpoint={onnx_path}"], run_name="pred_onnx"
    )
    run_predict(onnx_cfg)
    onnx_out = Path(onnx_cfg.output_dir)
    assert json.loads((onnx_out / "predictions.json").read_text())["model"]["runtime"] == "onnxruntime"
    for name in ("0", "1"):
        np.testing.assert_array_equal(
            np.asarray(Image.open(onnx_out / "masks" / f"{name}.png")),
            np.asarray(Image.open(out / "masks" / f"{name}.png")),
        )
    assert (onnx_out / "defects.csv").read_text().replace(str(onnx_out), "") == (out / "defects.csv").read_text()


def test_multilabel_export_carries_the_per_class_thresholds(compose_config, tmp_path):
    """A multilabel run made by hand (two sigmoid channels, thresholds tuned per class): ONNX gives N x C x H x W
    within the parity check, carries the thresholds, and predicts the same class masks as the checkpoint."""
    import onnxruntime as ort
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from defectseg.export import run_export
    from defectseg.inference.runtime import TUNED_THRESHOLD_KEY

    model_cfg = {"_target_": "defectseg.models.unet_paper", "in_channels": 3, "channels": [4, 8, 16], "num_classes": 1}
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": model_cfg, "dataset": {"image_size": 32}}), run_dir / "config.yaml")
    torch.manual_seed(0)
    model = instantiate(model_cfg, num_classes=2)
    checkpoint = {
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "hyper_parameters": {"threshold": 0.5, "classes": ["crack", "pit"], "multilabel": True},
        TUNED_THRESHOLD_KEY: {"best_threshold_per_class": [0.45, 0.55]},
    }
    torch.save(checkpoint, run_dir / "checkpoints" / "best.ckpt")

    report = run_export(compose_config("export", [f"checkpoint={run_dir}", "formats=[onnx]"], run_name="exp"))
    assert report["exported"]["onnx"]["ok"] and report["model"]["class_thresholds"] == [0.45, 0.55]
    session = ort.InferenceSession(report["exported"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    stored = json.loads(session.get_modelmeta().custom_metadata_map["defectseg"])
    assert stored["multilabel"] is True and stored["class_thresholds"] == [0.45, 0.55]
    assert session.run(None, {"images": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 2, 32, 32)

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(class_photo()[:60, :90]).save(photos / "p.png")
    masks = {}
    for name, model_path in (("ckpt", run_dir), ("onnx", report["exported"]["onnx"]["path"])):
        cfg = compose_config(
            "predict",
            [f"input={photos}", "progress=false", f"checkpoint={model_path}", "classes.masks=true"],
            run_name=name,
        )
        run_predict(cfg)
        summary = json.loads((Path(cfg.output_dir) / "predictions.json").read_text())
        assert summary["model"]["class_thresholds"] == [0.45, 0.55]
        masks[name] = [
            np.asarray(Image.open(Path(cfg.output_dir) / "class_masks" / c / "p.png")) for c in ("crack", "pit")
        ]
    for from_checkpoint, from_onnx in zip(masks["ckpt"], masks["onnx"]):
        np.testing.assert_array_equal(from_checkpoint, from_onnx)


def test_softmax_defect_threshold_finds_a_faint_class_argmax_misses():
    """1 - p(background) above the tuned threshold, of the most probable class: a class below the background still
    shows (what a model trained on few labels gives rare types), and t = 0.5 keeps argmax's answer here."""
    from defectseg.inference.classes import ClassDecoder

    probabilities = np.zeros((4, 2, 3), np.float32)
    probabilities[0] = [[0.9, 0.6, 0.3], [0.9, 0.9, 0.9]]  # background
    probabilities[1] = [[0.05, 0.3, 0.4], [0.05, 0.05, 0.05]]  # crack
    probabilities[2] = [[0.05, 0.1, 0.3], [0.05, 0.05, 0.05]]  # corrosion
    probabilities[3] = 1.0 - probabilities[:3].sum(axis=0)  # pit
    info = ModelInfo(source="softmax", runtime="numpy", threshold=0.35, classes=CLASSES)
    tuned = ClassDecoder.for_model(info, None, None)
    labels, _ = tuned.masks(probabilities)
    assert labels.tolist() == [[0, 1, 1], [0, 0, 0]]
    argmax_like, _ = ClassDecoder.for_model(info, 0.5, None).masks(probabilities)
    assert argmax_like.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert (probabilities.argmax(axis=0) == argmax_like).all()
