"""Predict: tiled inference, the tuned threshold, outputs per photo, unreadable files, end to end from a tiny run."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectseg.finetune import run_finetune
from defectseg.inference.runtime import TUNED_THRESHOLD_KEY, ModelInfo
from defectseg.inference.tiling import axis_layout, blend_window, predict_tiled, probability_map
from defectseg.inference.torch_runtime import TorchSegmenter
from defectseg.models import unet_paper
from defectseg.predict import main as predict_main
from defectseg.predict import run_predict
from defectseg.training.metrics import THRESHOLD_GRID, DefectDice, ThresholdSweep
from defectseg.utils.errors import UserError
from tests.helpers import stage2_overrides


def tiny_segmenter(seed: int = 0) -> TorchSegmenter:
    torch.manual_seed(seed)
    model = unet_paper(channels=(4, 8, 16)).eval()
    return TorchSegmenter(
        model, ModelInfo(source="tiny", runtime="torch", multiple=model.encoder.reduction), device="cpu"
    )


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_one_tile_equals_the_whole_image_through_the_network():
    segmenter = tiny_segmenter()
    image = photo(48, 64)
    tiled = predict_tiled(image, segmenter, tile_size=64, overlap=0.25, multiple=4)
    with torch.no_grad():
        direct = segmenter.network(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)).numpy()[
            0
        ]
    np.testing.assert_allclose(tiled, direct, atol=1e-6)


def test_the_segmenter_runs_channels_last_with_the_values_of_the_plain_network():
    """fp32 predict runs NHWC for speed (docs/speed.md): same probabilities as the NCHW network, to float rounding."""
    import copy

    torch.manual_seed(0)
    model = unet_paper(channels=(4, 8, 16)).eval()
    plain = copy.deepcopy(model)
    segmenter = TorchSegmenter(model, ModelInfo(source="t", runtime="torch", multiple=4), device="cpu")
    conv = segmenter.network.model.encoder.levels[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    images = np.random.default_rng(1).random((2, 3, 32, 48), dtype=np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(plain(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(segmenter(images), expected, atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (300, 41), (17, 130), (1, 1)])
def test_output_has_exactly_the_photo_size(height, width):
    probability = probability_map(
        photo(height, width), tiny_segmenter(), tile_size=32, overlap=0.25, batch_size=3, multiple=4
    )
    assert probability.shape == (height, width) and probability.dtype == np.float32
    assert np.isfinite(probability).all() and 0.0 <= probability.min() <= probability.max() <= 1.0


def test_blending_is_a_weighted_average_that_reproduces_a_pixelwise_model():
    """A model without spatial context must come out of any tiling unchanged: the weights normalise exactly."""

    def pixelwise(images: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(images.mean(axis=1, keepdims=True) * 6.0 - 3.0)))

    image = photo(300, 41, seed=3)
    whole = pixelwise(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)[0]
    for tile, overlap in ((32, 0.5), (64, 0.25), (48, 0.0)):
        progress: list[tuple[int, int]] = []
        tiled = predict_tiled(
            image,
            pixelwise,
            tile_size=tile,
            overlap=overlap,
            batch_size=4,
            multiple=16,
            on_progress=lambda *p, sink=progress: sink.append(p),
        )
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
        rows, columns = (len(axis_layout(side, tile, overlap, 16)[2]) for side in (300, 41))
        assert progress[-1] == (rows * columns, rows * columns) and len(progress) == -(-rows * columns // 4)


def test_tiles_cover_the_side_with_the_overlap_asked_for():
    padded, tile, origins = axis_layout(300, 64, 0.25, 16)
    assert (padded, tile, origins[0], origins[-1]) == (300, 64, 0, 236)
    assert all(0 < b - a <= 48 for a, b in itertools.pairwise(origins))
    assert axis_layout(37, 64, 0.25, 16) == (48, 48, [0])  # one tile, padded to the network's multiple
    window = blend_window(32, 32)
    assert window.min() > 0 and window[16, 16] == pytest.approx(1.0, abs=0.01) and window[0, 0] < 0.01


def test_scale_resamples_for_the_model_but_keeps_the_photo_size():
    probability = probability_map(photo(90, 70), tiny_segmenter(), tile_size=32, multiple=4, scale=0.5)
    assert probability.shape == (90, 70)
    with pytest.raises(ValueError, match="scale"):
        probability_map(photo(9, 7), tiny_segmenter(), scale=0)


def test_threshold_sweep_counts_dice_as_defect_dice_does_and_picks_the_best():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(5, 1, 16, 16, generator=generator)
    target = (torch.rand(5, 1, 16, 16, generator=generator) > 0.6).to(torch.uint8)
    target[0] = 0
    probabilities[0] = 0.1  # empty truth, empty prediction at 0.5: scores 1 in both
    sweep, dice = ThresholdSweep(), DefectDice()
    sweep.update(probabilities, target)
    dice.update(probabilities > 0.5, target > 0)
    assert sweep.compute()[THRESHOLD_GRID.index(0.5)].item() == pytest.approx(dice.compute().item(), abs=1e-6)

    sweep = ThresholdSweep()
    truth = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    truth[:, :, 2:5, 2:5] = 1
    sweep.update(torch.where(truth > 0, 0.3, 0.1), truth)  # the model is right, but below 0.5
    best = sweep.best(prefer=0.5)
    assert best == {"best_threshold": 0.25, "val_dice_at_best_threshold": 1.0}  # ties 0.1 < t < 0.3: nearest to 0.5


class DarkIsDefect:
    """A stand-in model: dark pixels are defects."""

    info = ModelInfo(source="stand-in", runtime="numpy", threshold=0.5, tile_size=32, multiple=16)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return (images.mean(axis=1, keepdims=True) < 0.3).astype(np.float32)


def dark_square_photo(height: int, width: int) -> np.ndarray:
    image = np.full((height, width, 3), 200, np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = 10
    return image


def test_unreadable_photo_is_named_skipped_and_fails_the_run(compose_config, monkeypatch, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(dark_square_photo(40, 60)).save(folder / "a.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    Image.fromarray(dark_square_photo(33, 21)).save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not a photo")
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: DarkIsDefect())
    cfg = compose_config("predict", [f"input={folder}", "mm_per_px=0.5", "save.probability=npy", "progress=false"])

    with pytest.raises(SystemExit) as exit_info:
        predict_main(cfg)
    assert exit_info.value.code == 1
    assert "b_broken.png" in capsys.readouterr().err

    out = Path(cfg.output_dir)
    for stem, size in (("a", (40, 60)), ("c", (33, 21))):
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == size and set(np.unique(mask)) == {0, 255}
        assert np.asarray(Image.open(out / "overlays" / f"{stem}.png")).shape == (*size, 3)
        assert np.load(out / "probabilities" / f"{stem}.npy").shape == size
    assert not (out / "masks" / "b_broken.png").exists()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(Path(r["image"]).name, r["status"]) for r in rows] == [
        ("a.png", "ok"),
        ("c.jpg", "ok"),
        ("b_broken.png", "failed"),
    ]
    assert "b_broken.png" in rows[2]["error"]
    assert int(rows[0]["defect_area_px"]) == 10 * 15 and float(rows[0]["defect_area_mm2"]) == pytest.approx(37.5)
    report = json.loads((out / "predictions.json").read_text())
    assert report["complete"] is True and len(report["failed"]) == 1
    (component,) = report["images"][0]["components"]
    assert component["bbox"] == [15, 10, 15, 10] and component["max_width_mm"] == pytest.approx(5.0)


def test_predict_without_a_model_says_how_to_get_one(compose_config, tmp_path):
    Image.fromarray(dark_square_photo(20, 20)).save(tmp_path / "x.png")
    cfg = compose_config("predict", [f"input={tmp_path / 'x.png'}"])
    with pytest.raises(UserError, match=r"make finetune.*checkpoint="):
        run_predict(cfg)
    with pytest.raises(UserError, match="no such file"):
        run_predict(compose_config("predict", [f"input={tmp_path / 'nowhere'}"]))


def test_end_to_end_from_a_tiny_finetune_run(compose_config, segmentation_set, tmp_path):
    """Stage 2 tunes and stores the threshold and the latest pointer; predict finds both without being told,
    and rebuilds the network from the run's own config (here a narrower U-Net than the default)."""
    overrides = [*stage2_overrides(segmentation_set, "scratch"), "model.channels=[8,16,32]"]
    metrics = run_finetune(compose_config("finetune", overrides, run_name="ft"))
    assert metrics["best_threshold"] in THRESHOLD_GRID
    assert (
        0.0 <= metrics["val_dice_at_best_threshold"] <= 1.0
        and metrics["val_dice_at_best_threshold"] >= metrics["best_val_dice"] - 1e-6
    )
    assert 0.0 <= metrics["test_dice_at_best_threshold"] <= 1.0
    run_dir = Path(metrics["output_dir"])
    assert (tmp_path / "outputs" / "finetune" / "latest").resolve() == run_dir.resolve()
    stored = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)[
        TUNED_THRESHOLD_KEY
    ]
    assert stored["best_threshold"] == metrics["best_threshold"]

    photos = tmp_path / "new_photos"
    photos.mkdir()
    sizes = {"odd": (37, 53), "tall": (75, 41), "square": (32, 32)}
    for name, (height, width) in sizes.items():
        Image.fromarray(photo(height, width)).save(photos / f"{name}.png")
    cfg = compose_config("predict", [f"input={photos}/*.png", "progress=false", "tiling.batch_size=2"], run_name="pred")
    summary = run_predict(cfg)

    assert summary["failed"] == [] and summary["predicted"] == 3
    assert summary["threshold"] == metrics["best_threshold"]
    out = Path(cfg.output_dir)
    for name, size in sizes.items():
        assert Image.open(out / "masks" / f"{name}.png").size == size[::-1]
        assert Image.open(out / "overlays" / f"{name}.png").size == size[::-1]
    report = json.loads((out / "predictions.json").read_text())
    assert (
        report["model"]["tile_size"] == 32  # the grid layout at the trained size (dataset.image_size)
        and report["model"]["tile_margin"] is None
        and report["model"]["runtime"] == "torch"
        and report["model"]["multiple"] == 4
    )
    assert report["model"]["threshold_source"].startswith("tuned on validation Dice")
    # the run records how it resized its training photos (32 px squares, kept at 32), and predict follows it
    assert metrics["input_scale"] == {
        "image_size": 32,
        "photo_width": 32.0,
        "photo_height": 32.0,
        "photos": metrics["train_images"],
        "x": 1.0,
        "y": 1.0,
    }
    assert report["model"]["input_scale"] == metrics["input_scale"]
    assert {(r["scale_x"], r["scale_y"]) for r in report["images"]} == {(1.0, 1.0)}
    assert Path(report["model"]["source"]) == (run_dir / "checkpoints" / "best.ckpt").resolve()
    assert {Path(r["image"]).stem for r in report["images"]} == set(sizes)


def test_tile_layout_defaults_and_refusal():
    """fitted: tiles up to 1024 px sharing the margin; grid: the trained size, as earlier versions tiled."""
    from omegaconf import OmegaConf

    from defectseg.predict import tile_layout

    tiling = OmegaConf.create({"layout": "fitted", "tile_size": None, "margin": 96, "overlap": 0.25})
    assert tile_layout(tiling, 128) == (1024, 96)
    assert tile_layout(OmegaConf.merge(tiling, {"tile_size": 512}), 128) == (512, 96)
    assert tile_layout(OmegaConf.merge(tiling, {"layout": "grid"}), 128) == (128, None)
    assert tile_layout(OmegaConf.merge(tiling, {"layout": "grid"}), None) == (256, None)
    with pytest.raises(UserError, match=r"tiling\.layout"):
        tile_layout(OmegaConf.merge(tiling, {"layout": "mosaic"}), 128)


def test_bf16_precision_runs_channels_last_under_autocast_and_stays_close_to_fp32():
    torch.manual_seed(0)
    model = unet_paper(channels=(4, 8, 16)).eval()
    info = ModelInfo(source="tiny", runtime="torch", multiple=model.encoder.reduction)
    fp32 = TorchSegmenter(model, info, device="cpu")
    images = photo(32, 48).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    reference = fp32(images)
    bf16 = TorchSegmenter(model, info, device="cpu", precision="bf16")
    fast = bf16(images)
    assert fast.dtype == np.float32 and fast.shape == reference.shape
    assert 0 < np.abs(fast - reference).max() < 0.05  # bf16 really ran (not bit-equal), yet close
    assert next(bf16.network.parameters()).is_contiguous(memory_format=torch.channels_last) or any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in bf16.network.parameters()
    )
    with pytest.raises(UserError, match="precision must be one of 32, bf16"):
        TorchSegmenter(model, info, device="cpu", precision="fp16")
