"""Multi-class segmentation end to end: mask layouts read into class labels (and refused), loss, Dice per class,
the training run, and the binary run left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectseg.data.classes import IGNORE, ClassSpec, ImageClasses
from defectseg.data.layouts import FolderLayout, MaskFile, MaskValues, PatternLayout, SeverstalLayout, encode_rle
from defectseg.data.readers import DataError, binary_mask
from defectseg.finetune import run_finetune
from defectseg.training.losses import BCEDiceLoss, ClassesLoss, frequency_weights
from defectseg.training.metrics import ClassDice
from tests.helpers import TINY_TRAINER

CLASSES = ("crack", "corrosion")
SPEC = ClassSpec(CLASSES)


def save(array: np.ndarray, path: Path, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P") if array.ndim == 3 else Image.fromarray(array, mode="L").convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
        image.putdata(array.reshape(-1).tolist())
    image.save(path)
    return path


def write_class_set(root: Path, n_images: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Noise photos with a dark bar (class 1, 'crack') and a bright square (class 2, 'corrosion'); index masks."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        image = rng.integers(110, 150, size=(size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        row = int(rng.integers(2, size - 4))
        mask[row : row + 2, 2 : size - 2] = 1
        x, y = (int(v) for v in rng.integers(0, size // 2, size=2))
        mask[y : y + 8, x : x + 8] = 2
        image[mask == 1] = 20
        image[mask == 2] = 230
        save(image, root / "images" / f"{i:03d}.png")
        save(mask, root / "masks" / f"{i:03d}.png")
    return root


# --- reading class labels -----------------------------------------------------------------------


def test_index_masks_read_as_classes_and_palette_pngs_as_indices(tmp_path):
    values = np.array([[0, 1, 2, 0]], np.uint8)
    for palette in (False, True):
        path = save(values, tmp_path / f"m{palette}.png", palette=palette)
        mask = MaskFile(path, MaskValues("classes").bind(SPEC)).load((1, 4))
        assert mask.tolist() == [[0, 1, 2, 0]]


def test_class_values_map_mask_values_to_declared_classes(tmp_path):
    path = save(np.array([[0, 7, 3, 0]], np.uint8), tmp_path / "m.png")
    values = MaskValues.from_options("classes", None, None, "ignore", class_values=[3, 7]).bind(SPEC)
    assert MaskFile(path, values).load((1, 4)).tolist() == [[0, 2, 1, 0]]


def test_an_undeclared_value_is_an_error_naming_the_file_and_values(tmp_path):
    path = save(np.array([[0, 1, 3, 4]], np.uint8), tmp_path / "m.png")
    with pytest.raises(DataError) as caught:
        MaskFile(path, MaskValues("classes").bind(SPEC)).load((1, 4))
    assert str(path) in str(caught.value) and "[3, 4]" in str(caught.value)


def test_voc_void_is_ignored_with_classes_and_in_binary_runs(tmp_path):
    path = save(np.array([[0, 1, 255, 2]], np.uint8), tmp_path / "m.png")
    multi = MaskValues("classes", void_value=255).bind(SPEC)
    assert MaskFile(path, multi).load((1, 4)).tolist() == [[0, 1, IGNORE, 2]]
    binary = MaskValues("classes", void_value=255).bind(None)
    assert binary.label_maps and MaskFile(path, binary).load((1, 4)).tolist() == [[0, 1, IGNORE, 1]]


def test_colour_masks_by_the_colour_table_and_unknown_colours_refused(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 255, 0)
    path = save(rgb, tmp_path / "c.png")
    table = {"crack": "#ff0000", "corrosion": [0, 255, 0]}
    values = MaskValues.from_options("colors", None, None, "ignore", colors=table).bind(SPEC)
    assert MaskFile(path, values).load((2, 3)).tolist() == [[0, 1, 0], [0, 0, 2]]
    rgb[0, 0] = (9, 9, 9)
    save(rgb, path)
    with pytest.raises(DataError, match="#090909") as caught:
        MaskFile(path, values).load((2, 3))
    assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match="no colour for"):
        MaskValues.from_options("colors", None, None, "ignore", colors={"crack": "#ff0000"}).bind(SPEC)


def test_class_from_prefix_folder_and_csv_with_binary_masks(tmp_path):
    images = tmp_path / "images"
    save(np.zeros((2, 2, 3), np.uint8), images / "corrosion__a.png")
    save(np.zeros((2, 2, 3), np.uint8), images / "free__b.png")
    save(np.array([[0, 255], [0, 0]], np.uint8), tmp_path / "masks" / "corrosion__a.png")
    save(np.zeros((2, 2), np.uint8), tmp_path / "masks" / "free__b.png")
    layout = FolderLayout(class_from="prefix")
    layout.bind(SPEC)
    loaded = {image.name: mask.load((2, 2)).tolist() for image, mask in layout.scan(tmp_path).samples}
    assert loaded == {"corrosion__a.png": [[0, 2], [0, 0]], "free__b.png": [[0, 0], [0, 0]]}  # empty: no class needed

    (tmp_path / "classes.csv").write_text("stem,class\ncorrosion__a,crack\nfree__b,free\n")
    layout = FolderLayout(class_from="csv", class_csv="classes.csv")
    layout.bind(SPEC)
    assert {i.name: m.load((2, 2)).max() for i, m in layout.scan(tmp_path).samples}["corrosion__a.png"] == 1

    folder = ImageClasses("folder")
    assert folder.of(tmp_path / "x" / "Crack" / "a.png", tmp_path / "x", tmp_path)[0] == "Crack"
    pattern = PatternLayout(
        mask_pattern="{stem}_mask.png", recursive=True, class_from="folder", class_aliases={"C": "crack"}
    )
    pattern.bind(SPEC)
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "p" / "C" / "a.png")
    save(np.array([[255, 0], [0, 0]], np.uint8), tmp_path / "p" / "C" / "a_mask.png")
    assert [m.load((2, 2)).tolist() for _, m in pattern.scan(tmp_path / "p").samples] == [[[1, 0], [0, 0]]]


def test_an_image_of_an_undeclared_class_with_defects_is_an_error(tmp_path):
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "images" / "pit__a.png")
    mask = save(np.array([[0, 255], [0, 0]], np.uint8), tmp_path / "masks" / "pit__a.png")
    layout = FolderLayout(class_from="prefix")
    layout.bind(SPEC)
    ((_, sample),) = layout.scan(tmp_path).samples
    with pytest.raises(DataError, match="'pit'") as caught:
        sample.load((2, 2))
    assert str(mask) in str(caught.value)


def test_binary_masks_with_classes_need_a_class_source():
    with pytest.raises(ValueError, match="class_from"):
        FolderLayout().bind(SPEC)


def test_severstal_class_column_gives_the_class_and_overlaps_need_multilabel(tmp_path):
    (tmp_path / "train_images").mkdir()
    save(np.zeros((4, 3, 3), np.uint8), tmp_path / "train_images" / "a.jpg")
    first, second = np.zeros((4, 3), np.uint8), np.zeros((4, 3), np.uint8)
    first[0, 0] = first[1, 0] = 1
    second[1, 0] = second[2, 2] = 1
    (tmp_path / "train.csv").write_text(
        f"ImageId,ClassId,EncodedPixels\na.jpg,2,{encode_rle(first)}\na.jpg,4,{encode_rle(second)}\n"
    )
    layout = SeverstalLayout(class_values=[2, 4])
    layout.bind(SPEC)
    with pytest.raises(DataError, match="overlaps"):
        layout.scan(tmp_path).samples[0][1].load((4, 3))
    layout = SeverstalLayout(class_values=[2, 4])
    layout.bind(ClassSpec(CLASSES, multilabel=True))
    bits = layout.scan(tmp_path).samples[0][1].load((4, 3))
    assert bits[0, 0] == 1 and bits[1, 0] == 3 and bits[2, 2] == 2
    layout = SeverstalLayout()  # ClassIds 1, 2: ClassId 4 is undeclared
    layout.bind(SPEC)
    with pytest.raises(DataError, match="line 3: ClassId 4"):
        layout.scan(tmp_path).samples[0][1].load((4, 3))


# --- the mask policy of binary runs (#23) --------------------------------------------------------


def test_voc_values_in_a_binary_mask_are_refused_not_thresholded(tmp_path):
    values = np.zeros((12, 12), np.uint8)
    values[3:9, 3:9] = 255
    values[4:8, 4:8] = 1
    with pytest.raises(DataError, match="void_value=255"):
        binary_mask(values, "m.png")


def test_a_gradient_is_refused_and_soft_edges_are_not():
    gradient = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    with pytest.raises(DataError, match="gradient"):
        binary_mask(gradient, "g.png")
    soft = np.zeros((20, 20), np.uint8)
    soft[5:15, 5:15] = 255
    soft[4, 5:15] = soft[15, 5:15] = 100  # an anti-aliased rim
    assert binary_mask(soft, "s.png")[5:15, 5:15].all() and not binary_mask(soft, "s.png")[4].any()


def test_twelve_bit_masks_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 4095], [2000, 0]], np.uint16)).save(path)
    from defectseg.data.readers import read_mask

    with pytest.raises(DataError, match="12-bit"):
        read_mask(path)


# --- loss and metrics -----------------------------------------------------------------------------


def test_per_class_dice_against_a_hand_computed_case():
    truth = torch.zeros(2, 2, 1, 4, dtype=torch.bool)
    preds = torch.zeros_like(truth)
    truth[0, 0, 0, :2] = True  # image 0: crack on 2 px, predicted on 1 of them + 1 more -> 2*1/(2+2) = 0.5
    preds[0, 0, 0, 1:3] = True
    truth[1, 1, 0, :] = True  # image 1: corrosion 4 px, predicted exactly -> 1.0; crack absent in both -> skipped
    preds[1, 1, 0, :] = True
    dice = ClassDice(2)
    dice.update(preds, truth)
    assert dice.per_class().tolist() == [0.5, 1.0]
    assert float(dice.compute()) == pytest.approx(0.75)
    per_image = dice.per_image()
    assert per_image[0, 0] == 0.5 and torch.isnan(per_image[0, 1]) and per_image[1, 1] == 1.0
    assert dice.image_means().tolist() == [0.5, 1.0]


def test_classes_loss_ignores_void_pixels_and_weights_classes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4), dtype=torch.uint8)
    loss = ClassesLoss(2)
    with_void = target.clone()
    with_void[:, :, 0] = IGNORE
    changed = logits.clone()
    changed[:, :, 0] += 5.0  # what the network says on ignored pixels does not matter
    assert torch.allclose(loss(logits, with_void), loss(changed, with_void))
    assert not torch.allclose(ClassesLoss(2, class_weights=[1, 5])(logits, target), loss(logits, target))
    assert torch.isfinite(ClassesLoss(2, multilabel=True)(logits[:, :2], target))
    assert frequency_weights([100, 400, 0]) == [2.0, 0.5, 1.0] or frequency_weights([100, 400, 0])[2] == 1.0


def test_classes_dice_term_is_over_the_batch_and_ignores_classes_it_lacks():
    """One defect type per photo: a class absent from an image must not be pushed to zero by the Dice term."""
    target = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    target[0, 0, 2:6, 2:6] = 1  # image 0 holds class 1 only, image 1 class 2 only
    target[1, 0, 1:3, 1:7] = 2
    dice_only = ClassesLoss(3, ce_weight=0.0)
    logits = torch.zeros(2, 4, 8, 8, requires_grad=True)
    dice_only(logits, target).backward()
    # raising class 1's logit where image 0 has it lowers the loss; class 3 (in no image) gets no Dice gradient
    assert logits.grad[0, 1, 3, 3] < 0
    # predicting background everywhere costs the whole Dice term (per image, the absent classes scored it 1/3)
    nothing = torch.full((2, 4, 8, 8), -20.0)
    nothing[:, 0] = 20.0
    assert float(dice_only(nothing, target)) > 0.9
    perfect = torch.full((2, 4, 8, 8), -20.0)
    for k in range(3):
        perfect[:, k][target[:, 0] == k] = 20.0
    assert float(dice_only(perfect, target)) == pytest.approx(0.0, abs=1e-4)


def test_binary_loss_is_unchanged_without_ignored_pixels_and_ignores_void():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).to(torch.uint8)
    loss = BCEDiceLoss()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    probs = torch.sigmoid(logits).flatten(1)
    flat = target.float().flatten(1)
    dice = (1 - (2 * (probs * flat).sum(1) + 1) / (probs.sum(1) + flat.sum(1) + 1)).mean()
    assert torch.equal(loss(logits, target), expected + dice)
    with_void = target.clone()
    with_void[:, :, 0] = IGNORE
    changed = logits.clone()
    changed[:, :, 0] -= 9
    assert torch.allclose(loss(logits, with_void), loss(changed, with_void))


# --- end to end -----------------------------------------------------------------------------------


def classes_overrides(root: Path, freeze: str = "scratch") -> list[str]:
    return [
        *TINY_TRAINER,
        f"freeze={freeze}",
        "dataset=folder_seg_classes",
        f"dataset.root={root}",
        f"dataset.classes=[{','.join(CLASSES)}]",
        "dataset.image_size=32",
        "dataset.batch_size=4",
    ]


def test_multiclass_finetune_writes_dice_per_class(compose_config, tmp_path):
    root = write_class_set(tmp_path / "set")
    cfg = compose_config("finetune", [*classes_overrides(root), "task.class_weights=frequency"])
    metrics = run_finetune(cfg)
    assert metrics["classes"] == list(CLASSES) and set(metrics["test_dice_per_class"]) == set(CLASSES)
    assert all(w > 0 for w in metrics["class_weights"]) and metrics["train_class_pixels"]["corrosion"] > 0
    assert 0.0 <= metrics["test_dice"] <= 1.0
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["test_dice_per_class"] == metrics["test_dice_per_class"]
    assert len(written["test_dice_per_image_per_class"]["crack"]) == len(written["test_dice_per_image"])


def test_num_classes_without_classes_is_one_clear_error(compose_config, tmp_path):
    from defectseg.utils.errors import UserError

    root = write_class_set(tmp_path / "set")
    overrides = [*TINY_TRAINER, "freeze=scratch", "dataset=folder_seg", f"dataset.root={root}", "model.num_classes=3"]
    with pytest.raises(UserError, match=r"dataset\.classes"):
        run_finetune(compose_config("finetune", overrides))


def test_binary_run_is_bit_identical_to_before_classes(compose_config, tmp_path):
    """Pinned from the same run on main at d68ca33 (before multi-class): same seed, same numbers."""
    from tests.helpers import write_segmentation_set

    root = write_segmentation_set(tmp_path / "seg", n_images=12, size=32, seed=3)
    overrides = [*TINY_TRAINER, "trainer.max_epochs=2", "freeze=scratch", "dataset=folder_seg", f"dataset.root={root}"]
    cfg = compose_config("finetune", [*overrides, "dataset.image_size=32", "dataset.batch_size=4", "seed=7"])
    metrics = run_finetune(cfg)
    assert metrics["best_val_dice"] == pytest.approx(0.0044843051582574844, rel=1e-4)
    assert metrics["test_dice"] == pytest.approx(0.0657874122262001, rel=1e-4)
    assert metrics["test_dice_per_image"] == pytest.approx([0.010363, 0.121212], rel=1e-4)
    assert metrics["best_threshold"] == 0.1 and "classes" not in metrics


def test_check_data_counts_classes_per_split_and_reports_each_mask(compose_config, tmp_path):
    from defectseg.check_data import run_check_data

    root = write_class_set(tmp_path / "set")
    overrides = ["dataset=folder_seg_classes", f"dataset.root={root}", f"dataset.classes=[{','.join(CLASSES)}]"]
    report = run_check_data(compose_config("check_data", overrides))
    assert set(report["classes"]) == {"train", "val", "test"}
    total = sum(split["corrosion"]["images"] for split in report["classes"].values())
    assert total == 12 and report["classes"]["train"]["crack"]["pixels"] > 0
    assert report["masks"]["read_as"] == {"class labels (classes)": 12}

    binary = tmp_path / "voc_like"
    write_class_set(binary, n_images=4)
    for mask in (binary / "masks").iterdir():  # soft edges on one, VOC values on another
        values = np.asarray(Image.open(mask)).copy()
        save(np.where(values > 0, 255, 0).astype(np.uint8), mask)
    first, second = sorted((binary / "masks").iterdir())[:2]
    soft = np.asarray(Image.open(first)).copy()
    soft[np.roll(soft, 1, axis=1) != soft] = 120
    save(soft, first)
    voc = np.asarray(Image.open(second)).copy()
    voc[voc == 255] = 1
    voc[:, 0] = 255
    save(voc, second)
    report = run_check_data(
        compose_config("check_data", ["dataset=folder_seg", f"dataset.root={binary}", "dataset.on_error=skip"])
    )
    kinds = {
        (Path(p["sample"]).name if p["kind"] != "soft_edges" else "soft", p["kind"])
        for p in report["errors"] + report["warnings"]
    }
    assert ("soft", "soft_edges") in kinds and (second.name, "mask_values") in kinds
    assert report["masks"]["read_as"]["binary, soft edges thresholded"] == 1


def test_embedded_set_labels_each_defect_by_kind(tmp_path):
    from defectseg.data.datamodules import SegmentationDataModule
    from defectseg.data.synthetic import SYNTHETIC_CLASSES

    synthetic = {"kind": "steel_segmentation", "n_images": 8, "size": 64, "seed": 0}
    dm = SegmentationDataModule(
        root=str(tmp_path / "steel"),
        image_size=32,
        batch_size=2,
        num_workers=0,
        synthetic=synthetic,
        classes=list(SYNTHETIC_CLASSES),
        split_fractions=(0.5, 0.25, 0.25),
    )
    dm.prepare_data()
    dm.setup()
    stats = dm.class_statistics("train")
    assert sum(stats["images"].values()) >= 1 and set(stats["pixels"]) == set(SYNTHETIC_CLASSES)
    with pytest.raises(ValueError, match="paints the classes"):
        SegmentationDataModule(root=str(tmp_path / "steel"), synthetic=synthetic, classes=["pit", "crack"])


def test_stage1_encoder_transfers_to_a_multiclass_decoder_in_every_freeze_mode(
    compose_config, classification_set, tmp_path
):
    from safetensors.torch import load_file

    from defectseg.pretrain import run_pretrain

    stage1 = run_pretrain(
        compose_config(
            "pretrain",
            [*TINY_TRAINER, "dataset=folder_cls", f"dataset.root={classification_set}", "dataset.image_size=32"],
            run_name="s1",
        )
    )
    encoder = Path(stage1["encoder_weights"])
    root = write_class_set(tmp_path / "set")
    for mode in ("encoder", "partial", "none"):
        cfg = compose_config(
            "finetune", [*classes_overrides(root, mode), f"pretrained_encoder={encoder.parent}"], run_name=mode
        )
        metrics = run_finetune(cfg)
        assert metrics["freeze"] == mode and metrics["pretrained_encoder"]["path"] == str(encoder.resolve())
        assert metrics["classes"] == list(CLASSES)
        state = torch.load(Path(metrics["checkpoint"]), weights_only=True)["state_dict"]
        assert state["model.segmentation_head.weight"].shape[0] == len(CLASSES) + 1  # background + classes
        if mode == "encoder":  # frozen: the stage-1 weights, untouched
            stage1_weights = load_file(str(encoder))
            name = next(iter(stage1_weights))
            assert torch.equal(state[f"model.encoder.{name}"], stage1_weights[name])


def test_multiclass_multirun_and_report(compose_config, classification_set, tmp_path):
    import os
    import subprocess
    import sys

    from defectseg.pretrain import run_pretrain

    stage1 = run_pretrain(
        compose_config(
            "pretrain",
            [*TINY_TRAINER, "dataset=folder_cls", f"dataset.root={classification_set}", "dataset.image_size=32"],
        )
    )
    root, sweep = write_class_set(tmp_path / "set"), tmp_path / "sweep"
    overrides = [o for o in classes_overrides(root) if not o.startswith("freeze=")]
    command = [sys.executable, "-m", "defectseg.finetune", "-m", "freeze=scratch,none", *overrides]
    command += [f"pretrained_encoder={Path(stage1['encoder_weights']).parent}", f"paths.root_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [*command, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(job["freeze"] for job in jobs) == ["none", "scratch"]
    assert all(set(job["test_dice_per_class"]) == set(CLASSES) for job in jobs)
    report = subprocess.run(
        [sys.executable, "-m", "defectseg.report", str(sweep)], env=env, capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-3000:]


def test_multilabel_run_tunes_a_threshold_per_class(compose_config, tmp_path):
    root = write_class_set(tmp_path / "set")
    metrics = run_finetune(compose_config("finetune", [*classes_overrides(root), "dataset.multilabel=true"]))
    assert metrics["multilabel"] is True and len(metrics["best_threshold_per_class"]) == len(CLASSES)
    state = torch.load(Path(metrics["checkpoint"]), weights_only=True)
    assert state["state_dict"]["model.segmentation_head.weight"].shape[0] == len(CLASSES)  # one sigmoid per class
    assert len(state["tuned_threshold"]["best_threshold_per_class"]) == len(CLASSES)


MAGNETIC_TILE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="the shared real data sets are not on this machine")
def test_magnetic_tile_types_read_as_classes_from_the_prefix(compose_config):
    from hydra.utils import instantiate

    cfg = compose_config("finetune", ["dataset=real_magnetic_tile_classes", f"dataset.root={MAGNETIC_TILE}"])
    datamodule = instantiate(cfg.dataset)
    per_split, problems = datamodule.list_samples()
    assert not problems and sum(len(s) for s in per_split.values()) == 511
    by_name = {image.name.split("__")[0]: mask for split in per_split.values() for image, mask in split}
    for prefix, label in (("Crack", 3), ("Uneven", 5)):
        loaded = by_name[prefix].load(np.asarray(Image.open(by_name[prefix].path)).shape)
        assert set(np.unique(loaded).tolist()) <= {0, label} and (loaded == label).any()


def test_report_has_dice_per_class_and_per_class_gains_with_cis(tmp_path):
    from defectseg.report import write_report
    from tests.helpers import finetune_metrics as job_metrics
    from tests.helpers import write_job, write_multirun

    sweep = tmp_path / "sweep"
    write_multirun(sweep, ["freeze=scratch,none", "seed=0,1"])
    per_image = {  # crack gains 0.2 on every image where it is; corrosion is equal; pit: one image where both
        # score it (+0.4), and a false positive only transfer predicts, which must not enter the paired gain
        "scratch": {"crack": [0.5, 0.4, None, 0.6], "corrosion": [0.7, None, 0.7, 0.7], "pit": [0.5, None, None, None]},
        "none": {"crack": [0.7, 0.6, None, 0.8], "corrosion": [0.7, None, 0.7, 0.7], "pit": [0.9, 0.0, None, None]},
    }
    job = 0
    for mode in ("scratch", "none"):
        for seed in (0, 1):
            m = job_metrics(mode, seed, 0.6)
            m["classes"] = [*CLASSES, "pit"]
            m["test_dice_per_image_per_class"] = per_image[mode]
            m["test_dice_per_class"] = {
                name: float(np.mean([v for v in values if v is not None])) for name, values in per_image[mode].items()
            }
            write_job(sweep, str(job), [f"freeze={mode}", f"seed={seed}"], m)
            job += 1
    result = write_report(sweep, plots=False)
    text = (sweep / "report.md").read_text()
    assert "## Dice per class" in text and "+0.200 [+0.200, +0.200]*" in text
    lines = (sweep / "report_classes.csv").read_text().splitlines()
    rows = {(r["mode"], r["class"]): r for r in __import__("csv").DictReader(lines)}
    assert float(rows[("transfer-full fine-tuning", "crack")]["gain_abs"]) == pytest.approx(0.2)
    assert rows[("transfer-full fine-tuning", "crack")]["boot_n_images"] == "3"
    assert rows[("transfer-full fine-tuning", "corrosion")]["verdict"] == "not significant"
    pit = rows[("transfer-full fine-tuning", "pit")]  # class Dice 0.45 vs 0.5, yet +0.4 where both score it
    assert float(pit["gain_abs"]) == pytest.approx(0.4) and float(pit["boot_ci_low"]) == pytest.approx(0.4)
    assert all(r["classes"] == ",".join([*CLASSES, "pit"]) for r in result["rows"])


def test_predict_and_export_read_the_classes_of_a_multiclass_model(compose_config, tmp_path):
    from defectseg.inference.torch_runtime import load_model

    root = write_class_set(tmp_path / "set")
    metrics = run_finetune(compose_config("finetune", classes_overrides(root)))
    _model, info = load_model(metrics["checkpoint"])
    assert info.classes == list(CLASSES) and info.multilabel is False and info.channels == len(CLASSES) + 1
