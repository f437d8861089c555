"""Public data layouts (mask beside the image, Pascal VOC, Severstal RLE), class-index masks,
grouped and capped splits, several stage-1 roots: each on small files written here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from defectseg.data.datamodules import ClassificationDataModule, SegmentationDataModule
from defectseg.data.layouts import (
    FolderLayout,
    MaskFile,
    MaskValues,
    PatternLayout,
    SeverstalLayout,
    VocLayout,
    decode_rle,
    encode_rle,
    parse_rle,
)
from defectseg.data.readers import DataError
from defectseg.data.splits import cap_train_split, group_keys, split_indices, subset_for_budget
from tests.helpers import CONF_DIR, TINY_TRAINER, write_classification_set

RNG = np.random.default_rng(0)


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def photo(height: int = 8, width: int = 8, grey: bool = False) -> np.ndarray:
    return RNG.integers(0, 256, (height, width) if grey else (height, width, 3), dtype=np.uint8)


def loaded(sample) -> np.ndarray:
    image, mask = sample
    with Image.open(image) as im:
        return mask.load((im.height, im.width))


# --- RLE --------------------------------------------------------------------------------------------


def test_rle_is_column_major_and_one_based():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = mask[2, 0] = mask[0, 1] = 1  # column-major pixel numbers 1, 3, 4
    assert encode_rle(mask) == "1 1 3 2"
    assert np.array_equal(decode_rle("1 1 3 2", (3, 4)), mask)


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (1, 7), (7, 13), (13, 7), (32, 50)])
def test_rle_round_trip_on_odd_shapes_and_borders(shape):
    height, width = shape
    masks = [np.ones(shape, np.uint8), np.zeros(shape, np.uint8), (RNG.random(shape) > 0.6).astype(np.uint8)]
    border = np.zeros(shape, np.uint8)
    border[:, 0] = border[:, -1] = border[0, :] = border[-1, :] = 1  # runs touching every edge, first and last pixel
    masks.append(border)
    for mask in masks:
        text = encode_rle(mask)
        assert np.array_equal(decode_rle(text, shape), mask), text
    assert encode_rle(np.ones(shape, np.uint8)) == f"1 {height * width}"
    assert encode_rle(np.zeros(shape, np.uint8)) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "even count"),
        ("1 x", "'x', not an integer"),
        ("0 3", "start 0 < 1"),
        ("4 0", "length 0 < 1"),
        ("-2 3", "start -2"),
    ],
)
def test_bad_rle_is_named(text, message):
    with pytest.raises(DataError, match=re.escape(message)) as caught:
        parse_rle(text, "train.csv, line 7")
    assert "train.csv, line 7" in str(caught.value)


def test_rle_run_past_the_image_names_the_sizes():
    with pytest.raises(DataError, match=r"line 3: run 10 3 ends at pixel 12, past the 4x2 image's 8 pixels"):
        decode_rle("10 3", (2, 4), where="x.csv, line 3")


# --- mask values ------------------------------------------------------------------------------------


def test_class_indices_reduce_to_any_defect_or_kept_classes():
    values = np.array([[0, 1, 2, 3, 255]], np.uint8)
    assert MaskValues("classes").to_binary(values, "m").tolist() == [[0, 1, 1, 1, 1]]
    assert MaskValues("classes", keep_classes=(1, 3)).to_binary(values, "m").tolist() == [[0, 1, 0, 1, 0]]
    assert MaskValues("classes", void_value=255).to_binary(values, "m").tolist() == [[0, 1, 1, 1, 255]]  # ignored
    assert MaskValues("classes", void_value=255, void_as="background").to_binary(values, "m").tolist() == [
        [0, 1, 1, 1, 0]
    ]
    assert MaskValues("classes", keep_classes=(2,), void_value=255, void_as="defect").to_binary(
        values, "m"
    ).tolist() == [[0, 0, 1, 0, 1]]


def test_binary_mode_refuses_class_indices_and_class_options():
    with pytest.raises(DataError, match="class-index"):
        MaskValues().to_binary(np.array([[0, 1, 2]], np.uint8), "m.png")
    with pytest.raises(ValueError, match="mask_values=classes"):
        MaskValues("binary", keep_classes=(1,))
    with pytest.raises(ValueError, match="mask_values='rgb'"):
        MaskValues("rgb")


def test_palette_mask_is_read_as_indices_not_colours(tmp_path):
    indices = np.array([[0, 1, 2], [2, 255, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (252 * 3) + [224, 224, 192]  # VOC-like colours
    image.putpalette(palette)
    image.save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as check:
        assert check.mode == "P"
    mask = MaskFile(tmp_path / "m.png", MaskValues("classes", keep_classes=(2,), void_value=255))
    assert mask.load((2, 3)).tolist() == [[0, 0, 1], [1, 255, 0]]  # the void pixel is ignored, not background


def test_mask_file_of_another_size_names_the_file(tmp_path):
    path = save(np.zeros((4, 6), np.uint8), tmp_path / "m.png")
    with pytest.raises(DataError, match=re.escape(f"{path}: mask is 6x4 but its image is 5x5")):
        MaskFile(path).load((5, 5))


# --- mask beside the image --------------------------------------------------------------------------


def write_magnetic_tile(root: Path) -> Path:
    """MT_<Class>/Imgs/<stem>.jpg + <stem>.png, grey, of varying sizes, as the set is published."""
    for cls, sizes in {"MT_Blowhole": [(20, 30), (24, 17)], "MT_Free": [(40, 22)]}.items():
        for i, (h, w) in enumerate(sizes):
            save(photo(h, w, grey=True), root / cls / "Imgs" / f"exp{i}.jpg")
            mask = np.zeros((h, w), np.uint8)
            if cls != "MT_Free":
                mask[2:6, 3:9] = 255
            save(mask, root / cls / "Imgs" / f"exp{i}.png")
    return root


def test_pattern_layout_finds_masks_beside_images_recursively(tmp_path):
    root = write_magnetic_tile(tmp_path / "mt")
    scan = PatternLayout("{stem}.png", recursive=True).scan(root)
    assert scan.splits is None
    assert [(i.parent.parent.name, i.name, Path(str(m)).name) for i, m in scan.samples] == [
        ("MT_Blowhole", "exp0.jpg", "exp0.png"),
        ("MT_Blowhole", "exp1.jpg", "exp1.png"),
        ("MT_Free", "exp0.jpg", "exp0.png"),
    ]
    assert loaded(scan.samples[0]).sum() == 24 and loaded(scan.samples[2]).sum() == 0
    with pytest.raises(DataError, match="holds no images"):
        PatternLayout("{stem}.png", recursive=False).scan(root)


@pytest.mark.parametrize("suffix", ["_mask", "_label"])
def test_pattern_layout_with_a_suffix_never_takes_masks_for_images(tmp_path, suffix):
    for stem in ("a", "b"):
        save(photo(), tmp_path / f"{stem}.png")
        save(np.full((8, 8), 255, np.uint8), tmp_path / f"{stem}{suffix}.png")
    samples = PatternLayout(f"{{stem}}{suffix}.png").scan(tmp_path).samples
    assert [(i.name, Path(str(m)).name) for i, m in samples] == [
        ("a.png", f"a{suffix}.png"),
        ("b.png", f"b{suffix}.png"),
    ]


def test_pattern_layout_names_images_without_a_mask(tmp_path):
    save(photo(), tmp_path / "a.jpg")
    save(np.zeros((8, 8), np.uint8), tmp_path / "a_mask.png")
    orphan = save(photo(), tmp_path / "sub" / "lonely.jpg")
    with pytest.raises(DataError, match=re.escape(str(orphan)) + r".*no lonely_mask\.png"):
        PatternLayout("{stem}_mask.png", recursive=True).scan(tmp_path)


def test_pattern_layout_refuses_a_pattern_without_fields():
    with pytest.raises(ValueError, match="mask_pattern"):
        PatternLayout("mask.png")
    with pytest.raises(ValueError, match="mask_pattern"):
        PatternLayout("{id}.png")


def test_grey_images_of_varying_sizes_batch_as_three_channels(tmp_path):
    """Magnetic-tile: grey photos of many sizes become 3xSxS tensors with their masks resized alike."""
    root = write_magnetic_tile(tmp_path / "mt")
    dm = SegmentationDataModule(
        root=str(root),
        layout=PatternLayout("{stem}.png", recursive=True),
        image_size=32,
        batch_size=3,
        num_workers=0,
        split_fractions=(0.34, 0.33, 0.33),
        augment={"enabled": False},
    )
    dm.setup()
    images = torch.stack([dm.datasets[s][i]["image"] for s in dm.datasets for i in range(len(dm.datasets[s]))])
    masks = torch.stack([dm.datasets[s][i]["mask"] for s in dm.datasets for i in range(len(dm.datasets[s]))])
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert masks.sum() > 0 and set(masks.unique().tolist()) <= {0, 1}


# --- Pascal VOC ---------------------------------------------------------------------------------------


def write_voc(root: Path, lists: dict[str, list[str]] | None = None) -> Path:
    lists = lists if lists is not None else {"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]}
    for n, image_id in enumerate(sorted({i for ids in lists.values() for i in ids} | {"unlisted"})):
        save(photo(6, 10), root / "JPEGImages" / f"{image_id}.jpg")
        indices = np.zeros((6, 10), np.uint8)
        indices[1, 1 + n % 3] = 1 + n % 3  # classes 1..3
        indices[0, :] = 255  # void border
        mask = Image.fromarray(indices, mode="P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (251 * 3) + [224, 224, 192])
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_split_lists_are_honoured(tmp_path):
    root = write_voc(tmp_path / "voc")
    dm = SegmentationDataModule(root=str(root), layout=VocLayout(), image_size=16, batch_size=2, num_workers=0)
    dm.setup()
    assert {split: sorted(Path(f).stem for f in files) for split, files in dm.split_files.items()} == {
        "train": ["a", "b", "c"],
        "val": ["d"],
        "test": ["e"],
    }
    mask = dm.datasets["train"].pairs[0][1].load((6, 10))
    assert (mask[0] == 255).all() and (mask[1:] == 1).sum() == 1  # void border ignored, the class pixel a defect
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}  # label maps: the void survives resizing as 255


def test_voc_keep_classes(tmp_path):
    root = write_voc(tmp_path / "voc")
    kept = {Path(i).stem: (m.load((6, 10)) == 1).sum() for i, m in VocLayout(keep_classes=[2]).scan(root).samples}
    assert kept == {"a": 0, "b": 1, "c": 0, "d": 0, "e": 1}  # ids sorted a..e, unlisted: classes 1, 2, 3, 1, 2


def test_voc_without_a_test_list_has_no_test_split_or_uses_the_one_named(tmp_path):
    root = write_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["c"]})
    assert set(VocLayout().scan(root).splits) == {"train", "val"}
    scan = VocLayout(split_files={"train": "train", "val": "val", "test": "val"}).scan(root)
    assert [len(scan.splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]


def test_voc_without_lists_splits_by_fractions(tmp_path):
    root = write_voc(tmp_path / "voc")
    assert VocLayout(split_files=None).scan(root).splits is None
    assert len(VocLayout(split_files=None).scan(root).samples) == 6  # every mask, unlisted included


def test_voc_listed_image_missing_names_list_and_line(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("d\n\nghost\n")
    with pytest.raises(
        DataError, match=re.escape(str(root / "ImageSets" / "Segmentation" / "val.txt")) + r", line 3: no image 'ghost'"
    ):
        VocLayout().scan(root)


def test_voc_image_in_two_lists_is_refused(tmp_path):
    root = write_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["b"], "test": ["c"]})
    with pytest.raises(DataError, match=r"val\.txt, line 1: 'b' is also in train\.txt"):
        VocLayout().scan(root)


# --- Severstal --------------------------------------------------------------------------------------


def write_severstal(
    root: Path,
    rows: list[str],
    header: str = "ImageId,ClassId,EncodedPixels",
    images=("a.jpg", "b.jpg", "c.jpg"),
    size=(4, 6),
) -> Path:
    for name in images:
        save(photo(*size), root / "train_images" / name)
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_severstal_rows_merge_per_image_and_unlisted_images_are_empty(tmp_path):
    first, second = np.zeros((4, 6), np.uint8), np.zeros((4, 6), np.uint8)
    first[0, 0:2] = 1  # touches the top-left corner
    second[3, 5] = 1  # the last pixel
    root = write_severstal(
        tmp_path / "sev", [f"a.jpg,1,{encode_rle(first)}", f"a.jpg,3,{encode_rle(second)}", "b.jpg,2,5 4"]
    )
    masks = {i.name: m.load((4, 6)) for i, m in SeverstalLayout().scan(root).samples}
    assert np.array_equal(masks["a.jpg"], first | second)
    assert masks["b.jpg"][:, 1].tolist() == [1, 1, 1, 1] and masks["b.jpg"].sum() == 4
    assert masks["c.jpg"].sum() == 0
    only_three = {i.name: m.load((4, 6)) for i, m in SeverstalLayout(keep_classes=[3]).scan(root).samples}
    assert np.array_equal(only_three["a.jpg"], second) and only_three["b.jpg"].sum() == 0


def test_severstal_wide_format(tmp_path):
    root = write_severstal(
        tmp_path / "sev",
        ["a.jpg_1,1 2", "a.jpg_2,", "b.jpg_1,", "b.jpg_4,24 1"],
        header="ImageId_ClassId,EncodedPixels",
    )
    masks = {i.name: m.load((4, 6)) for i, m in SeverstalLayout().scan(root).samples}
    assert masks["a.jpg"][:2, 0].tolist() == [1, 1] and masks["a.jpg"].sum() == 2
    assert masks["b.jpg"][3, 5] == 1 and masks["b.jpg"].sum() == 1


def test_severstal_errors_name_the_csv_line(tmp_path):
    root = write_severstal(tmp_path / "sev", ["a.jpg,1,1 2", "zzz.jpg,1,1 2", "b.jpg,1,3 x"])
    with pytest.raises(DataError) as caught:
        SeverstalLayout().scan(root)
    message = str(caught.value)
    assert "2 problem(s)" in message
    assert (
        "train.csv, line 3: image 'zzz.jpg' is not in" in message
        and "train.csv, line 4: EncodedPixels holds 'x'" in message
    )
    (root / "train.csv").write_text("id,rle\n")
    with pytest.raises(DataError, match="header"):
        SeverstalLayout().scan(root)


def test_severstal_run_outside_the_image_fails_setup_naming_the_line(tmp_path):
    root = write_severstal(tmp_path / "sev", ["a.jpg,1,1 2", "b.jpg,1,20 10"] + [f"c.jpg,1,{k} 1" for k in range(1, 4)])
    dm = SegmentationDataModule(
        root=str(root),
        layout=SeverstalLayout(),
        image_size=16,
        batch_size=2,
        num_workers=0,
        split_fractions=(0.34, 0.33, 0.33),
    )
    with pytest.raises(
        DataError, match=r"train\.csv, line 3: run 20 10 ends at pixel 29, past the 6x4 image's 24 pixels"
    ):
        dm.setup()


def test_layout_and_folder_options_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.layout"):
        SegmentationDataModule(root=str(tmp_path), layout=FolderLayout(), mask_suffix="_mask")


# --- grouped and capped splits ------------------------------------------------------------------------


def test_group_keys_from_file_names():
    paths = [
        Path("P/11125-1_x0_y0.jpg"),
        Path("N/11125-1_x158_y157.jpg"),
        Path("P/IMG_3_x0_y0.jpg"),
        Path("N/00001.jpg"),
    ]
    keys = group_keys(paths, r"^(.+)_x\d+_y\d+$")
    assert keys[0] == keys[1] == "group:11125-1" and keys[2] == "group:IMG_3" and keys[3].startswith("file:")
    assert group_keys(paths, None) is None
    with pytest.raises(ValueError, match="matches no file name"):
        group_keys(paths, r"^nothing_(\d+)$")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        group_keys(paths, "(")


@pytest.mark.parametrize("seed", range(6))
def test_grouped_split_never_puts_a_group_in_two_splits(seed):
    rng = np.random.default_rng(seed)
    groups = [f"photo{g}" for g in rng.integers(0, 25, size=120)]
    labels = rng.integers(0, 2, size=120).tolist()
    splits = split_indices(labels, (0.7, 0.15, 0.15), seed, groups=groups)
    owner = {}
    for name, indices in splits.items():
        for i in indices:
            assert owner.setdefault(groups[i], name) == name, f"{groups[i]} in {owner[groups[i]]} and {name}"
    assert sorted(i for idx in splits.values() for i in idx) == list(range(120))
    assert all(splits[name] for name in ("train", "val", "test"))
    assert 0.5 < len(splits["train"]) / 120 < 0.9


def test_capped_train_split_moves_the_surplus_to_test():
    splits = split_indices([0] * 100, (0.7, 0.15, 0.15), seed=0)
    capped = cap_train_split(splits, 40, seed=0)
    assert len(capped["train"]) == 40 and capped["val"] == splits["val"]
    assert sorted(capped["train"] + capped["test"]) == sorted(splits["train"] + splits["test"])
    assert capped["train"] == subset_for_budget(splits["train"], 40, seed=0)
    assert cap_train_split(splits, 1000, seed=0) == splits
    groups = [f"g{i // 4}" for i in range(100)]
    grouped = cap_train_split(split_indices([0] * 100, (0.7, 0.15, 0.15), 0, groups), 30, 0, groups)
    assert {groups[i] for i in grouped["train"]}.isdisjoint({groups[i] for i in grouped["test"]})
    assert len(grouped["train"]) <= 30


def test_train_split_size_keeps_test_fixed_across_label_budgets(segmentation_set):
    def module(**kwargs):
        dm = SegmentationDataModule(
            root=str(segmentation_set),
            image_size=16,
            batch_size=2,
            num_workers=0,
            split_fractions=(0.6, 0.2, 0.2),
            train_split_size=4,
            **kwargs,
        )
        dm.setup()
        return dm

    full, budget = module(), module(max_train_images=2)
    assert full.summary() == {"train_images": 4, "val_images": 2, "test_images": 4}
    assert budget.split_files["test"] == full.split_files["test"] and set(budget.split_files["train"]) < set(
        full.split_files["train"]
    )


# --- stage 1 on several folders ----------------------------------------------------------------------


def write_photo_crops(root: Path, photos: int = 8) -> Path:
    """Crops named <photo>_x<X>_y<Y>, both classes cut from the same photos (as deepcrack_patches_cls)."""
    for p in range(photos):
        for k, (x, y) in enumerate([(0, 0), (158, 0), (317, 157)]):
            cls = "Positive" if (p + k) % 2 else "Negative"
            save(photo(16, 16), root / cls / f"{p:05d}-1_x{x}_y{y}.jpg")
    return root


def test_several_roots_are_split_each_on_its_own_and_grouped(tmp_path):
    bricks = write_classification_set(tmp_path / "bricks", n_per_class=10, size=16)
    crops = write_photo_crops(tmp_path / "crops")
    dm = ClassificationDataModule(
        root=[str(bricks), str(crops)],
        image_size=16,
        batch_size=4,
        num_workers=0,
        split_fractions=(0.6, 0.2, 0.2),
        split_groups=r"^(.+)_x\d+_y\d+$",
    )
    dm.setup()
    assert dm.class_names == ["Negative", "Positive"] and dm.grouped_images == 24
    for split, files in dm.split_files.items():
        assert {Path(f).parents[1].name for f in files} == {"bricks", "crops"}, split
    photos = {
        split: {Path(f).stem.split("_x")[0] for f in files if "crops" in f} for split, files in dm.split_files.items()
    }
    assert not (photos["train"] & photos["val"] or photos["train"] & photos["test"] or photos["val"] & photos["test"])
    by_source = dm.test_loaders_by_source()
    assert set(by_source) == {"bricks", "crops"}
    assert sum(len(loader.dataset) for loader in by_source.values()) == len(dm.datasets["test"])
    dm.write_split(tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["root"] == [str(bricks), str(crops)]


def test_several_roots_with_other_classes_are_refused(tmp_path):
    a = write_classification_set(tmp_path / "a", n_per_class=3, size=8)
    b = write_classification_set(tmp_path / "b", n_per_class=3, size=8, classes=("Crack", "NoCrack"))
    with pytest.raises(DataError, match="differ"):
        ClassificationDataModule(root=[str(a), str(b)], image_size=16, num_workers=0).setup()


def test_split_groups_matching_no_root_is_refused(tmp_path):
    a = write_classification_set(tmp_path / "a", n_per_class=3, size=8)
    b = write_classification_set(tmp_path / "b", n_per_class=3, size=8)
    with pytest.raises(ValueError, match="split_groups"):
        ClassificationDataModule(root=[str(a), str(b)], image_size=16, num_workers=0, split_groups=r"_x\d+").setup()


def test_stage1_on_several_roots_reports_each_source(compose_config, tmp_path):
    from defectseg.pretrain import run_pretrain

    bricks = write_classification_set(tmp_path / "bricks", n_per_class=6, size=16)
    crops = write_photo_crops(tmp_path / "crops", photos=6)
    cfg = compose_config(
        "pretrain",
        [
            *TINY_TRAINER,
            "dataset=folder_cls",
            f"dataset.root=[{bricks},{crops}]",
            "dataset.image_size=32",
            "dataset.batch_size=4",
            "dataset.split_fractions=[0.5,0.25,0.25]",
            "dataset.split_groups='^(.+)_x\\d+_y\\d+$'",
        ],
    )
    metrics = run_pretrain(cfg)
    assert set(metrics["test_by_source"]) == {"bricks", "crops"}
    assert sum(s["test_images"] for s in metrics["test_by_source"].values()) == metrics["test_images"]
    assert all(0.0 <= s["test_accuracy"] <= 1.0 for s in metrics["test_by_source"].values())
    assert metrics["split_groups"] == "^(.+)_x\\d+_y\\d+$" and metrics["grouped_images"] == 18


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "layout"),
    [
        ("folder_seg_mask_pattern", PatternLayout),
        ("voc_seg", VocLayout),
        ("severstal_seg", SeverstalLayout),
        ("real_magnetic_tile", FolderLayout),
    ],
)
def test_layout_configs_instantiate(compose_config, dataset, layout):
    cfg = compose_config("finetune", [f"dataset={dataset}", "dataset.root=/some/where"])
    assert isinstance(instantiate(cfg.dataset).layout, layout)


def test_real_configs_point_into_the_shared_datasets_folder(compose_config):
    for stage, dataset, folder in [
        ("finetune", "real_magnetic_tile", "magnetic_tile"),
        ("finetune", "real_crackforest", "crackforest"),
        ("finetune", "real_deepcrack", "deepcrack"),
        ("pretrain", "real_brickwork_cls", "brickwork_crack_cls"),
        ("pretrain", "real_deepcrack_patches_cls", "deepcrack_patches_cls"),
    ]:
        cfg = compose_config(stage, [f"dataset={dataset}", "paths.shared_datasets=/data/shared"])
        assert cfg.dataset.root == f"/data/shared/{folder}", dataset
    cfg = compose_config(
        "pretrain", ["dataset=real_crack_cls", "experiment=real", "paths.shared_datasets=/data/shared"]
    )
    assert list(cfg.dataset.root) == ["/data/shared/brickwork_crack_cls", "/data/shared/deepcrack_patches_cls"]
    assert cfg.dataset.image_size == 128 and cfg.experiment_name == "real"


# --- the real shared sets (skipped where the folder is absent) -------------------------------------------


def shared_datasets() -> Path:
    from omegaconf import OmegaConf

    paths = OmegaConf.load(Path(CONF_DIR) / "paths" / "default.yaml")
    paths.root_dir = str(Path(CONF_DIR).parent)
    folder = Path(OmegaConf.to_container(OmegaConf.create({"paths": paths}), resolve=True)["paths"]["shared_datasets"])
    if not folder.is_dir():
        pytest.skip(f"shared real data sets not found at {folder}")
    return folder


def test_real_deepcrack_patches_split_by_photo():
    root = shared_datasets() / "deepcrack_patches_cls"
    dm = ClassificationDataModule(
        root=str(root),
        image_size=32,
        num_workers=0,
        split_fractions=(0.7, 0.15, 0.15),
        split_groups=r"^(.+)_x\d+_y\d+$",
    )
    dm.setup()
    photos = {
        split: {re.sub(r"_x\d+_y\d+$", "", Path(f).stem) for f in files} for split, files in dm.split_files.items()
    }
    assert not (photos["train"] & photos["val"] or photos["train"] & photos["test"] or photos["val"] & photos["test"])
    assert dm.grouped_images == sum(dm.summary().values())


def test_real_crackforest_budget_and_masks():
    root = shared_datasets() / "crackforest"
    dm = SegmentationDataModule(root=str(root), image_size=32, num_workers=0, train_split_size=175)
    dm.setup()
    assert dm.summary() == {"train_images": 82, "val_images": 18, "test_images": 18}
    assert dm.datasets["val"][0]["image"].shape == (3, 32, 32)
