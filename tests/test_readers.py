"""Folder readers, image/mask decoding, splits and the two DataModules on tiny sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectseg.data.datamodules import ClassificationDataModule, SegmentationDataModule
from defectseg.data.readers import (
    DataError,
    find_split_folders,
    read_image,
    read_mask,
    scan_classification_folder,
    scan_segmentation_folder,
)
from defectseg.data.splits import split_indices, subset_for_budget
from tests.helpers import write_classification_set


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def rgb(size=(8, 8), value=100) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)


def make_pairs(root: Path, stems, mask_suffix: str = "", size: int = 8) -> Path:
    for stem in stems:
        save(rgb((size, size)), root / "images" / f"{stem}.png")
        save(np.zeros((size, size), np.uint8), root / "masks" / f"{stem}{mask_suffix}.png")
    return root


# --- scan_classification_folder ---------------------------------------------------------------


def test_classification_labels_follow_sorted_class_names(tmp_path: Path):
    root = write_classification_set(tmp_path / "c", n_per_class=2, size=8, classes=("Positive", "Negative"))
    samples, names = scan_classification_folder(root)
    assert names == ["Negative", "Positive"]
    assert {(p.parent.name, label) for p, label in samples} == {("Negative", 0), ("Positive", 1)}
    assert len(samples) == 4


def test_classification_labels_follow_the_classes_argument(tmp_path: Path):
    root = write_classification_set(tmp_path / "c", n_per_class=2, size=8)
    samples, names = scan_classification_folder(root, classes=["Positive", "Negative"])
    assert names == ["Positive", "Negative"]
    assert {(p.parent.name, label) for p, label in samples} == {("Positive", 0), ("Negative", 1)}


def test_classification_missing_root_names_the_folder(tmp_path: Path):
    with pytest.raises(DataError, match="nowhere"):
        scan_classification_folder(tmp_path / "nowhere")


def test_classification_one_class_only_is_refused(tmp_path: Path):
    root = write_classification_set(tmp_path / "c", n_per_class=2, size=8, classes=("Positive",))
    with pytest.raises(DataError, match=re.escape(str(root))):
        scan_classification_folder(root)


def test_classification_empty_class_folder_names_it(tmp_path: Path):
    root = write_classification_set(tmp_path / "c", n_per_class=2, size=8)
    (root / "Empty").mkdir()
    (root / "Empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=re.escape(str(root / "Empty"))):
        scan_classification_folder(root)


def test_classification_unknown_class_is_refused(tmp_path: Path):
    root = write_classification_set(tmp_path / "c", n_per_class=2, size=8)
    with pytest.raises(DataError, match="Cracked") as caught:
        scan_classification_folder(root, classes=["Negative", "Cracked"])
    assert str(root) in str(caught.value)


# --- scan_segmentation_folder -----------------------------------------------------------------


def test_segmentation_pairs_by_stem(tmp_path: Path):
    root = make_pairs(tmp_path / "s", ["b", "a", "c"])
    pairs = scan_segmentation_folder(root)
    assert [(i.name, m.name) for i, m in pairs] == [("a.png", "a.png"), ("b.png", "b.png"), ("c.png", "c.png")]
    assert all(i.parent.name == "images" and m.parent.name == "masks" for i, m in pairs)


def test_segmentation_pairs_with_mask_suffix(tmp_path: Path):
    root = make_pairs(tmp_path / "s", ["a", "b"], mask_suffix="_mask")
    pairs = scan_segmentation_folder(root, mask_suffix="_mask")
    assert [(i.stem, m.stem) for i, m in pairs] == [("a", "a_mask"), ("b", "b_mask")]
    with pytest.raises(DataError):
        scan_segmentation_folder(root)  # without the suffix nothing pairs


def test_segmentation_image_without_mask_is_named(tmp_path: Path):
    root = make_pairs(tmp_path / "s", ["a"])
    orphan = save(rgb(), root / "images" / "orphan.png")
    with pytest.raises(DataError, match=re.escape(str(orphan))):
        scan_segmentation_folder(root)


def test_segmentation_duplicate_image_stems_are_refused(tmp_path: Path):
    root = make_pairs(tmp_path / "s", ["a"])
    save(rgb(), root / "images" / "a.jpg")
    with pytest.raises(DataError, match="'a'"):
        scan_segmentation_folder(root)


def test_segmentation_duplicate_mask_stems_are_refused(tmp_path: Path):
    root = make_pairs(tmp_path / "s", ["a"])
    save(np.zeros((8, 8), np.uint8), root / "masks" / "a.bmp")
    with pytest.raises(DataError, match="two masks"):
        scan_segmentation_folder(root)


def test_segmentation_missing_masks_folder_is_named(tmp_path: Path):
    root = tmp_path / "s"
    save(rgb(), root / "images" / "a.png")
    with pytest.raises(DataError, match=re.escape(str(root / "masks"))):
        scan_segmentation_folder(root)


# --- find_split_folders -----------------------------------------------------------------------


def test_find_split_folders(tmp_path: Path):
    assert find_split_folders(tmp_path) is None
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    assert find_split_folders(tmp_path) == {"train": tmp_path / "train", "test": tmp_path / "test"}


def test_split_folders_without_train_are_refused(tmp_path: Path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="train"):
        find_split_folders(tmp_path)


# --- read_image -------------------------------------------------------------------------------


def test_read_image_rgb_is_unchanged(tmp_path: Path):
    array = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    out = read_image(save(array, tmp_path / "x.png"))
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    assert np.array_equal(out, array)


def test_read_image_grey_becomes_three_equal_channels(tmp_path: Path):
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10)
    out = read_image(save(grey, tmp_path / "g.png"))
    assert out.shape == (6, 10, 3)
    assert all(np.array_equal(out[..., c], grey) for c in range(3))


def test_read_image_rgba_drops_alpha(tmp_path: Path):
    array = np.zeros((4, 4, 4), np.uint8)
    array[..., 0], array[..., 3] = 200, 50
    out = read_image(save(array, tmp_path / "a.png"))
    assert out.shape == (4, 4, 3)
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_read_image_palette_is_expanded_to_rgb(tmp_path: Path):
    image = Image.new("P", (5, 3))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    image.putpixel((1, 1), 1)
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (3, 5, 3)
    assert out[1, 1].tolist() == [10, 20, 30] and out[0, 0].tolist() == [0, 0, 0]


def test_read_image_16_bit_is_scaled_to_8_bit(tmp_path: Path):
    array = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(array, tmp_path / "d.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = read_image(path)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_read_image_truncated_file_names_it(tmp_path: Path):
    path = save(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), tmp_path / "t.png")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_image(path)


def test_read_image_non_image_names_it(tmp_path: Path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_image(path)


# --- read_mask --------------------------------------------------------------------------------

EXPECTED = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=np.uint8)


def test_read_mask_0_255(tmp_path: Path):
    out = read_mask(save(EXPECTED * 255, tmp_path / "m.png"))
    assert out.dtype == np.uint8 and np.array_equal(out, EXPECTED)


def test_read_mask_0_1(tmp_path: Path):
    assert np.array_equal(read_mask(save(EXPECTED, tmp_path / "m.png")), EXPECTED)


def test_read_mask_bool_mode_1(tmp_path: Path):
    path = save(EXPECTED.astype(bool), tmp_path / "m.png")
    with Image.open(path) as check:
        assert check.mode == "1"
    out = read_mask(path)
    assert out.dtype == np.uint8 and np.array_equal(out, EXPECTED)


def test_read_mask_all_zero_is_an_empty_mask(tmp_path: Path):
    out = read_mask(save(np.zeros((3, 3), np.uint8), tmp_path / "m.png"))
    assert out.shape == (3, 3) and out.sum() == 0


def test_read_mask_soft_edges_threshold_at_128(tmp_path: Path):
    soft = np.array([[0, 64, 127, 128, 200, 255]], dtype=np.uint8)
    assert read_mask(save(soft, tmp_path / "m.png")).tolist() == [[0, 0, 0, 1, 1, 1]]


def test_read_mask_grey_rgb_mask_is_accepted(tmp_path: Path):
    grey_rgb = np.repeat((EXPECTED * 255)[..., None], 3, axis=2)
    assert np.array_equal(read_mask(save(grey_rgb, tmp_path / "m.png")), EXPECTED)


def test_read_mask_wrong_size_names_mask_and_both_sizes(tmp_path: Path):
    path = save(np.zeros((8, 16), np.uint8), tmp_path / "m.png")
    with pytest.raises(DataError) as caught:
        read_mask(path, expected_size=(12, 20))
    message = str(caught.value)
    assert str(path) in message and "16x8" in message and "20x12" in message


def test_read_mask_class_indices_are_refused(tmp_path: Path):
    path = save(np.array([[0, 1, 2, 3]], dtype=np.uint8), tmp_path / "m.png")
    with pytest.raises(DataError, match="class-index") as caught:
        read_mask(path)
    assert str(path) in str(caught.value)


def test_read_mask_colour_is_refused(tmp_path: Path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    path = save(colour, tmp_path / "m.png")
    with pytest.raises(DataError, match="colour") as caught:
        read_mask(path)
    assert str(path) in str(caught.value)


def test_read_mask_unreadable_names_it(tmp_path: Path):
    path = tmp_path / "m.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_mask(path)


# --- splits -----------------------------------------------------------------------------------

LABELS = [0] * 30 + [1] * 10


def test_split_is_deterministic_for_a_seed_and_varies_with_it():
    a = split_indices(LABELS, (0.7, 0.15, 0.15), seed=3)
    assert a == split_indices(LABELS, (0.7, 0.15, 0.15), seed=3)
    assert a != split_indices(LABELS, (0.7, 0.15, 0.15), seed=4)


def test_split_is_disjoint_and_covers_everything():
    s = split_indices(LABELS, (0.6, 0.2, 0.2), seed=0)
    train, val, test = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(len(LABELS)))
    assert (len(train), len(val), len(test)) == (24, 8, 8)


def test_split_is_stratified():
    s = split_indices(LABELS, (0.6, 0.2, 0.2), seed=0)
    for name, expected in {"train": (18, 6), "val": (6, 2), "test": (6, 2)}.items():
        labels = [LABELS[i] for i in s[name]]
        assert (labels.count(0), labels.count(1)) == expected, name


@pytest.mark.parametrize(
    "fractions", [(0.7, 0.2, 0.2), (0.5, 0.2, 0.2), (0.7, 0.3), (1.2, -0.1, -0.1), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5)]
)
def test_bad_fractions_are_refused_naming_the_setting(fractions):
    with pytest.raises(ValueError, match=r"dataset\.split_fractions"):
        split_indices(LABELS, fractions, seed=0)


def test_split_stays_disjoint_for_a_tiny_train_fraction():
    s = split_indices([0] * 4, (0.05, 0.05, 0.9), seed=0)
    together = s["train"] + s["val"] + s["test"]
    assert sorted(together) == [0, 1, 2, 3]


def test_budget_subsets_nest_and_are_deterministic():
    pool = list(range(100, 140))
    five, ten = subset_for_budget(pool, 5, seed=0), subset_for_budget(pool, 10, seed=0)
    assert len(five) == 5 and len(ten) == 10
    assert set(five) < set(ten) <= set(pool)
    assert five == subset_for_budget(pool, 5, seed=0)
    assert subset_for_budget(pool, None, seed=0) == pool
    assert subset_for_budget(pool, 1000, seed=0) == pool


def test_budget_below_one_is_refused():
    with pytest.raises(ValueError, match="max_train_images"):
        subset_for_budget(range(10), 0, seed=0)


# --- SegmentationDataModule -------------------------------------------------------------------


def seg_module(root: Path, **kwargs) -> SegmentationDataModule:
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0, "split_fractions": (0.6, 0.2, 0.2), **kwargs}
    return SegmentationDataModule(root=str(root), **kwargs)


def test_segmentation_module_splits_by_fractions(segmentation_set: Path):
    dm = seg_module(segmentation_set)
    dm.setup()
    assert dm.summary() == {"train_images": 6, "val_images": 2, "test_images": 2}


def test_segmentation_batches_are_uint8_images_and_binary_masks(segmentation_set: Path):
    dm = seg_module(segmentation_set, image_size=48)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        images, masks = batch["image"], batch["mask"]
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 48, 48)
        assert masks.dtype == torch.uint8 and masks.shape[1:] == (1, 48, 48)
        assert images.shape[0] == masks.shape[0] > 0
        assert set(masks.unique().tolist()) <= {0, 1}
        assert masks.sum() > 0  # every fixture image has a defect square


def test_max_train_images_limits_train_only(segmentation_set: Path):
    full = seg_module(segmentation_set)
    full.setup()
    dm = seg_module(segmentation_set, max_train_images=2)
    dm.setup()
    assert dm.summary() == {"train_images": 2, "val_images": 2, "test_images": 2}
    assert set(dm.split_files["train"]) < set(full.split_files["train"])
    assert dm.split_files["test"] == full.split_files["test"]


def test_wrong_size_mask_fails_setup_naming_the_file(segmentation_set: Path):
    bad = segmentation_set / "masks" / "004.png"
    save(np.zeros((16, 16), np.uint8), bad)
    dm = seg_module(segmentation_set)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        dm.setup()


def test_write_split_records_disjoint_file_lists(segmentation_set: Path, tmp_path: Path):
    dm = seg_module(segmentation_set)
    dm.setup()
    dm.write_split(tmp_path / "split.json")
    data = json.loads((tmp_path / "split.json").read_text())
    train, val, test = (set(data[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 10
    assert data["split_seed"] == 0 and data["root"] == str(segmentation_set)


def test_segmentation_split_is_the_same_on_a_second_setup(segmentation_set: Path):
    a, b = seg_module(segmentation_set, split_seed=5), seg_module(segmentation_set, split_seed=5)
    a.setup()
    b.setup()
    assert a.split_files == b.split_files


# --- ClassificationDataModule -----------------------------------------------------------------


def test_classification_module_classes_and_batches(classification_set: Path):
    dm = ClassificationDataModule(root=str(classification_set), image_size=32, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == 2 and dm.class_names == ["Negative", "Positive"]
    assert sum(dm.summary().values()) == 12
    for name, files in dm.split_files.items():
        assert {Path(f).parent.name for f in files} == {"Negative", "Positive"}, name  # stratified
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    assert batch["label"].dtype == torch.long and batch["label"].shape == (batch["image"].shape[0],)
    paths = [dm.datasets["val"].samples[i] for i in batch["index"].tolist()]
    assert batch["label"].tolist() == [label for _, label in paths]
    assert [Path(p).parent.name for p, _ in paths] == [dm.class_names[label] for _, label in paths]


def test_classification_module_honours_classes_order(classification_set: Path):
    dm = ClassificationDataModule(
        root=str(classification_set), image_size=32, batch_size=4, num_workers=0, classes=["Positive", "Negative"]
    )
    dm.setup()
    assert dm.class_names == ["Positive", "Negative"]
    train = dm.datasets["train"].samples
    assert all((path.parent.name == "Positive") == (label == 0) for path, label in train)


def test_grayscale_option_makes_all_splits_grey(segmentation_set):
    from defectseg.data.datamodules import SegmentationDataModule

    datamodule = SegmentationDataModule(
        root=str(segmentation_set), image_size=32, batch_size=4, num_workers=0, grayscale=True
    )
    datamodule.setup()
    for split in ("train", "val"):
        image = datamodule.datasets[split][0]["image"]
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    colour = SegmentationDataModule(root=str(segmentation_set), image_size=32, batch_size=4, num_workers=0)
    colour.setup()
    channels = colour.datasets["val"][0]["image"]
    assert not (torch.equal(channels[0], channels[1]) and torch.equal(channels[1], channels[2]))
