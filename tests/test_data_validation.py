"""Data validation: check_data's report, training's up-front check (raise or skip), the image/mask mode policy,
corrupted files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectseg.check_data import run_check_data
from defectseg.data.datamodules import ClassificationDataModule, SegmentationDataModule
from defectseg.data.readers import DataError, read_image, read_mask
from defectseg.utils.errors import exit_cleanly_on_user_error
from tests.helpers import write_classification_set, write_segmentation_set


def messy_split_set(root: Path) -> dict[str, Path]:
    """train/ and val/ folders with one file of each kind of problem; returns the problem files by name."""
    write_segmentation_set(root / "train", n_images=8, seed=0)
    write_segmentation_set(root / "val", n_images=3, seed=1)
    train = root / "train"
    bad = {
        "truncated": train / "images" / "001.png",
        "small_mask": train / "masks" / "002.png",
        "class_mask": train / "masks" / "003.png",
        "alpha_mask": train / "masks" / "004.png",
        "no_mask": train / "images" / "extra.png",
        "orphan_mask": train / "masks" / "lonely.png",
        "duplicate": root / "val" / "images" / "000.png",
    }
    bad["truncated"].write_bytes(bad["truncated"].read_bytes()[:120])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad["small_mask"])
    Image.fromarray(np.array([[0, 1, 2, 3]] * 32, np.uint8).repeat(8, axis=1)).save(bad["class_mask"])
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(bad["alpha_mask"])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad["no_mask"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(bad["orphan_mask"])
    shutil.copy(train / "images" / "005.png", bad["duplicate"])  # the same photo in train and val
    shutil.copy(train / "masks" / "005.png", root / "val" / "masks" / "000.png")
    return bad


def test_check_data_reports_every_problem_and_exits_2(compose_config, tmp_path):
    root = tmp_path / "messy"
    bad = messy_split_set(root)
    cfg = compose_config("check_data", ["dataset=folder_seg", f"dataset.root={root}"])
    with pytest.raises(SystemExit) as exited:
        exit_cleanly_on_user_error(run_check_data)(cfg)
    assert exited.value.code == 2

    report = json.loads((Path(cfg.paths.output_dir) / "data_check.json").read_text())
    assert report["counts"] == {"train": 8, "val": 3, "total": 11}
    errors = {(e["kind"], Path(e["message"].split(":")[0])) for e in report["errors"]}
    assert errors == {
        ("unreadable", bad["truncated"]),
        ("mask_size", bad["small_mask"]),
        ("mask_values", bad["class_mask"]),
        ("mask_values", bad["alpha_mask"]),
        ("missing_mask", bad["no_mask"]),
    }
    warnings = {e["kind"]: e["message"] for e in report["warnings"]}
    assert str(bad["orphan_mask"]) in warnings["mask_without_image"]
    assert str(bad["duplicate"]) in warnings["duplicate"] and "005.png (train)" in warnings["duplicate"]
    assert report["images"]["sizes"] == {"32x32": 11} and report["images"]["modes"] == {"RGB": 11}
    assert set(report["masks"]["values"]) >= {"0", "255"} and report["samples_with_errors"] == 5
    summary = (Path(cfg.paths.output_dir) / "data_check.txt").read_text()
    assert str(bad["truncated"]) in summary and "image sizes: 32x32 x11" in summary


def test_check_data_on_a_clean_classification_set(compose_config, tmp_path):
    root = write_classification_set(tmp_path / "cls", n_per_class=5)
    report = run_check_data(compose_config("check_data", ["dataset=folder_cls", f"dataset.root={root}"]))
    assert report["classes"] == {"Negative": 5, "Positive": 5} and report["counts"]["total"] == 10
    assert report["errors"] == [] and report["warnings"] == [] and report["trainable"]
    assert report["images"]["channels"] == {"3": 10}


def test_training_stops_up_front_with_the_list_of_bad_files(tmp_path):
    root = tmp_path / "messy"
    bad = messy_split_set(root)
    datamodule = SegmentationDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(DataError) as caught:
        datamodule.setup()
    message = str(caught.value)
    assert message.startswith("5 problem(s) in") and "dataset.on_error=skip" in message
    for name in ("truncated", "small_mask", "class_mask", "alpha_mask", "no_mask"):
        assert str(bad[name]) in message, name


def test_on_error_skip_leaves_bad_samples_out_and_says_which(tmp_path):
    root = tmp_path / "messy"
    bad = messy_split_set(root)
    datamodule = SegmentationDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, on_error="skip")
    datamodule.setup()
    assert datamodule.summary() == {"train_images": 4, "val_images": 3, "skipped_images": 5}
    datamodule.write_split(tmp_path / "split.json")
    split = json.loads((tmp_path / "split.json").read_text())
    skipped = {entry["file"] for entry in split["skipped"]}
    images = {
        bad["truncated"],
        bad["no_mask"],
        *(bad[k].parent.parent / "images" / bad[k].name for k in ("small_mask", "class_mask", "alpha_mask")),
    }
    assert skipped == {str(p) for p in images}
    assert not skipped & set(split["train"])
    assert next(iter(datamodule.train_dataloader()))["image"].shape[1:] == (3, 32, 32)


def test_on_error_must_be_raise_or_skip(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.on_error"):
        SegmentationDataModule(root=str(tmp_path), on_error="ignore")


def test_classification_checks_every_image_up_front(classification_set):
    broken = classification_set / "Positive" / "002.png"
    broken.write_bytes(b"")
    datamodule = ClassificationDataModule(root=str(classification_set), image_size=32, batch_size=4, num_workers=0)
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot read image (the file is empty (0 bytes))")):
        datamodule.setup()


# --- the mode policy: handled or refused, never misread silently -------------------------------


def test_16_bit_images_share_one_scale(tmp_path):
    """A dark 16-bit image stays dark: no per-image guess that its values are 8-bit."""
    bright = tmp_path / "bright.png"
    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((4, 4), 60000, np.uint16)).save(bright)
    Image.fromarray(np.full((4, 4), 200, np.uint16)).save(dark)
    assert read_image(bright)[0, 0].tolist() == [233] * 3
    assert read_image(dark)[0, 0].tolist() == [1] * 3


def test_cmyk_images_are_converted(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)
    image = read_image(path)
    assert image.shape == (8, 8, 3) and image.min() > 240  # no ink is white


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: Image.fromarray(np.zeros((4, 4), np.float32)).save(p.with_suffix(".tif")), "floating-point image"),
        (
            lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(
                p.with_suffix(".tif"), save_all=True, append_images=[Image.fromarray(np.ones((4, 4), np.uint8))]
            ),
            "holds 2 frames",
        ),
    ],
)
def test_unsupported_images_are_refused(tmp_path, make, expected):
    make(tmp_path / "x")
    path = tmp_path / "x.tif"
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + expected):
        read_image(path)


def test_masks_with_transparency_are_refused_but_opaque_rgba_is_read(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1, 1, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_mask(tmp_path / "opaque.png").sum() == 1
    rgba[..., 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    with pytest.raises(DataError, match="transparent pixels"):
        read_mask(tmp_path / "clear.png")


def test_float_masks_are_refused(tmp_path):
    path = tmp_path / "m.tif"
    Image.fromarray(np.full((4, 4), 0.6, np.float32)).save(path)
    with pytest.raises(DataError, match="floating-point mask"):
        read_mask(path)


def test_check_data_warns_about_exif_rotation(compose_config, tmp_path):
    root = write_segmentation_set(tmp_path / "seg", n_images=4)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = root / "images" / "001.jpg"
    Image.open(root / "images" / "001.png").convert("RGB").save(rotated, exif=exif)
    (root / "images" / "001.png").unlink()
    report = run_check_data(compose_config("check_data", ["dataset=folder_seg", f"dataset.root={root}"]))
    assert [w["kind"] for w in report["warnings"]] == ["exif_orientation"] and str(rotated) in report["warnings"][0][
        "message"
    ]


# --- fuzz: corrupted files never crash or misread, they are named ---------------------------------


def corrupted_variants(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    originals = {}
    for fmt in ("png", "jpg", "bmp"):
        path = tmp_path / f"original.{fmt}"
        Image.fromarray(pixels).save(path)
        originals[fmt] = path.read_bytes()
    variants: dict[str, bytes] = {"empty.png": b"", "text.png": b"not an image at all\n", "random.jpg": rng.bytes(3000)}
    for fmt, data in originals.items():
        for cut in (4, 16, 60, len(data) // 2, len(data) - 20):
            variants[f"cut{cut}.{fmt}"] = data[:cut]
        for flip in range(4):
            corrupted = bytearray(data)
            for index in rng.integers(8, len(data), size=4):
                corrupted[index] ^= 0xFF
            variants[f"flip{flip}.{fmt}"] = bytes(corrupted)
        variants[f"wrong_extension_{fmt}.tif"] = data  # content decides, not the name
    paths = []
    for name, data in variants.items():
        path = tmp_path / "fuzz" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_corrupted_files_are_refused_naming_the_file_or_read_whole(tmp_path):
    outcomes = {"refused": 0, "read": 0}
    for path in corrupted_variants(tmp_path):
        for read in (read_image, read_mask):
            try:
                array = read(path)
            except DataError as error:
                assert str(error).startswith(f"{path}: "), error
                outcomes["refused"] += 1
                continue
            # Decoded: a whole image of the right shape (a flipped JPEG byte can decode to other pixels; nothing can
            # tell).
            assert array.dtype == np.uint8 and array.shape[:2] == (32, 32), path
            outcomes["read"] += 1
        if path.name.startswith(("empty", "text", "cut4.", "cut16.")):
            with pytest.raises(DataError):
                read_image(path)
    assert outcomes["refused"] > 20 and outcomes["read"] > 0
    wrong_extension = read_image(tmp_path / "fuzz" / "wrong_extension_png.tif")
    assert np.array_equal(wrong_extension, read_image(tmp_path / "original.png"))
