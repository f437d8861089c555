"""Experiments (conf/experiment/*.yaml): what each sets per stage, and every preset with every data set config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from defectseg.config import validate_config
from defectseg.finetune import run_finetune
from defectseg.pretrain import run_pretrain
from defectseg.utils.errors import ConfigError
from tests.helpers import CONF_DIR, TINY_TRAINER, write_classification_set, write_segmentation_set

EXPERIMENTS = [None, "quick", "paper", "real"]

# What `python -m defectseg.<stage> [experiment=...]` ran with before the experiment files were merged into one per
# experiment (conf/experiment_stage/ existed until then); `--cfg job --resolve` showed the same for every other key.
KEY_FACTS = {
    ("pretrain", None): {"experiment_name": "paper", "dataset.image_size": 224, "train_steps": None},
    ("pretrain", "quick"): {"experiment_name": "quick", "dataset.image_size": 128, "train_steps": 6000},
    ("pretrain", "paper"): {"experiment_name": "paper", "dataset.image_size": 224, "train_steps": None},
    ("pretrain", "real"): {"experiment_name": "real", "dataset.image_size": 128, "train_steps": 1728},
    ("finetune", None): {"experiment_name": "paper", "dataset.image_size": 256, "trainer.max_epochs": 100},
    ("finetune", "quick"): {"experiment_name": "quick", "dataset.image_size": 128, "trainer.max_epochs": 16},
    ("finetune", "paper"): {"experiment_name": "paper", "dataset.image_size": 256, "trainer.max_epochs": 100},
    ("finetune", "real"): {"experiment_name": "real", "dataset.image_size": 128, "trainer.max_epochs": 20},
}
TRANSFER = {None: "full_finetune", "quick": "full_finetune", "paper": "frozen_encoder", "real": "full_finetune"}
STAGE1_PHOTOS_PER_CLASS = {None: 1000, "quick": 20000, "paper": 20000, "real": 1000}


def overrides_for(experiment: str | None) -> list[str]:
    return [f"experiment={experiment}"] if experiment else []


@pytest.mark.parametrize(("stage", "experiment"), list(KEY_FACTS))
def test_each_experiment_sets_per_stage_what_it_did_before(compose_config, stage, experiment):
    cfg = compose_config(stage, overrides_for(experiment))
    for key, expected in KEY_FACTS[stage, experiment].items():
        assert OmegaConf.select(cfg, key) == expected, key
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0
    assert cfg.trainer.max_epochs == KEY_FACTS["finetune", experiment]["trainer.max_epochs"] or stage == "pretrain"
    if stage == "pretrain":  # the embedded stage-1 set's size; stage 2's embedded set keeps the paper's 175 photos
        assert cfg.dataset.synthetic.n_per_class == STAGE1_PHOTOS_PER_CLASS[experiment]
        assert cfg.trainer.max_epochs == 100  # train_steps, where set, sizes stage 1
    else:
        assert cfg.dataset.synthetic.n_images == 175
        assert cfg.transfer.name == TRANSFER[experiment] and cfg.train_steps is None


def test_train_steps_on_stage_2_is_refused(compose_config):
    with pytest.raises(ConfigError, match=r"^train_steps=300: sizes stage 1 .*stage 2 is sized by trainer\.max_epochs"):
        validate_config(compose_config("finetune", ["experiment=quick", "train_steps=300"]), "finetune")


@pytest.mark.parametrize("experiment", ["quick", "real"])
def test_a_stage_value_of_an_experiment_still_gives_way_to_the_command_line(compose_config, experiment):
    cfg = compose_config("pretrain", [f"experiment={experiment}", "trainer.max_epochs=2", "train_steps=50"])
    assert cfg.trainer.max_epochs == 2 and cfg.train_steps == 50


# ---- every preset with every data set config of its stage (issue #18) ----------------------------------------------


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_pattern_set(root: Path, n_images: int = 8) -> Path:
    """x.png + x_mask.png side by side (dataset=folder_seg_mask_pattern with mask_pattern={stem}_mask.png)."""
    rng = np.random.default_rng(0)
    for i in range(n_images):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i : 12 + i, 6:14] = 255
        save(rng.integers(100, 200, (32, 32, 3), dtype=np.uint8), root / "photos" / f"{i:02d}.png")
        save(mask, root / "photos" / f"{i:02d}_mask.png")
    return root


def write_voc_set(root: Path, n_images: int = 8) -> Path:
    rng = np.random.default_rng(1)
    ids = [f"{i:02d}" for i in range(n_images)]
    for i, image_id in enumerate(ids):
        save(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), root / "JPEGImages" / f"{image_id}.jpg")
        indices = np.zeros((32, 32), np.uint8)
        indices[2 : 6 + i, 3:9] = 1 + i % 2
        save(indices, root / "SegmentationClass" / f"{image_id}.png")
    lists = {"train": ids[:5], "val": ids[5:7], "test": ids[7:]}
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, listed in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
    return root


def write_class_set(root: Path, n_images: int = 8) -> Path:
    """images/ + masks/ of class indices (1 and 2), for dataset=folder_seg_classes."""
    rng = np.random.default_rng(3)
    for i in range(n_images):
        mask = np.zeros((32, 32), np.uint8)
        mask[2 + i : 6 + i, 2:30] = 1
        mask[20:28, 4 + i : 12 + i] = 2
        save(rng.integers(100, 200, (32, 32, 3), dtype=np.uint8), root / "images" / f"{i:02d}.png")
        save(mask, root / "masks" / f"{i:02d}.png")
    return root


def write_severstal_set(root: Path, n_images: int = 8) -> Path:
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n_images):
        save(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), root / "train_images" / f"{i:02d}.jpg")
        rows.append(f"{i:02d}.jpg,{1 + i % 4},{1 + 32 * i} 20")
    (root / "train.csv").write_text("\n".join(["ImageId,ClassId,EncodedPixels", *rows]) + "\n")
    return root


# Tiny sizes, whatever the experiment says: the embedded sets are generated (a few photos), and folders are written.
TINY_SYNTHETIC = ["stage1_synthetic_per_class=4", "dataset.synthetic.size=32"]
TINY_IMAGES = ["dataset.image_size=32", "dataset.batch_size=2", "dataset.num_workers=0", "dataset.cache=false"]


def folder_overrides(dataset: str, tmp_path: Path) -> list[str] | None:
    """Overrides pointing a data set config at tiny generated data; None for a real_* set (composed only)."""
    if dataset.startswith("real_"):
        return None
    if dataset == "folder_cls":
        return [f"dataset.root={write_classification_set(tmp_path / 'cls', n_per_class=5)}"]
    if dataset == "folder_seg":
        return [f"dataset.root={write_segmentation_set(tmp_path / 'seg', n_images=8)}"]
    if dataset == "folder_seg_mask_pattern":
        return [
            f"dataset.root={write_pattern_set(tmp_path / 'pattern')}",
            "dataset.layout.mask_pattern='{stem}_mask.png'",
        ]
    if dataset == "folder_seg_classes":
        return [f"dataset.root={write_class_set(tmp_path / 'classes')}", "dataset.classes=[crack,corrosion]"]
    if dataset == "voc_seg":
        return [f"dataset.root={write_voc_set(tmp_path / 'voc')}"]
    if dataset == "severstal_seg":
        return [f"dataset.root={write_severstal_set(tmp_path / 'severstal')}"]
    if dataset == "synthetic_seg":
        return ["dataset.synthetic.n_images=8", "dataset.synthetic.size=32"]
    if dataset == "synthetic_unlabelled":
        return [
            *TINY_SYNTHETIC[:1],
            "dataset.sources.concrete.dataset.synthetic.size=32",
            "dataset.sources.target.dataset.synthetic.n_images=8",
            "dataset.sources.target.dataset.synthetic.size=32",
        ]
    return list(TINY_SYNTHETIC)  # synthetic_cls, synthetic_crack_seg


def dataset_configs(suffix: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / "dataset").glob(f"*{suffix}.yaml"))


# (stage, pretrain_task or None, data set config): every data set config a stage (and objective) takes.
COMBINATIONS = (
    [("pretrain", "classification", d) for d in dataset_configs("_cls")]
    + [("pretrain", "segmentation", d) for d in ("folder_seg", "synthetic_crack_seg", "real_crack_seg")]
    + [
        ("pretrain", "self_supervised", d)
        for d in ("folder_seg", "synthetic_unlabelled", "real_unlabelled_magnetic_tile")
    ]
    + [("finetune", None, d) for d in dataset_configs("_seg")]
    + [("finetune", None, d) for d in ("folder_seg_mask_pattern", *dataset_configs("_seg_classes"))]
    + [
        ("finetune", None, d)
        for d in ("real_magnetic_tile", "real_magnetic_tile_classes", "real_crackforest", "real_deepcrack")
    ]
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize(("stage", "objective", "dataset"), COMBINATIONS)
def test_every_preset_takes_every_data_set_config(compose_config, tmp_path, experiment, stage, objective, dataset):
    """Composes and validates; on tiny generated data also prepares and sets the data up (real_* sets: compose only)."""
    data = folder_overrides(dataset, tmp_path)
    overrides = [*overrides_for(experiment), f"dataset={dataset}", *(data or []), *TINY_IMAGES]
    if objective:
        overrides.insert(0, f"pretrain_task={objective}")
    if objective == "self_supervised":
        overrides.append("pretrain_task.patch_size=8")
    cfg = compose_config(stage, overrides)
    validate_config(cfg, stage)
    if data is None:
        return
    if stage == "pretrain":
        from defectseg.training.pretraining import build_datamodule

        datamodule = build_datamodule(cfg)
    else:
        datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert next(iter(datamodule.train_dataloader()))["image"].shape[-2:] == (32, 32)


@pytest.mark.parametrize(
    ("experiment", "stage", "data"),
    [("quick", "pretrain", "folder_cls"), ("paper", "finetune", "folder_seg"), ("real", "pretrain", "folder_seg")],
)
def test_each_preset_fits_on_a_users_folder(compose_config, tmp_path, experiment, stage, data):
    """One tiny fit per experiment, on the folder data sets a user points them at (quick's once died with KeyError)."""
    overrides = [f"experiment={experiment}", f"dataset={data}", *folder_overrides(data, tmp_path), *TINY_IMAGES]
    overrides += [*TINY_TRAINER, "trainer.limit_train_batches=1", "~logger", "callbacks=none"]
    if stage == "pretrain" and data == "folder_seg":
        overrides += ["pretrain_task=segmentation"]
    if stage == "finetune":
        overrides += ["freeze=scratch", "calibration_batches=1"]
    metrics = (run_pretrain if stage == "pretrain" else run_finetune)(compose_config(stage, overrides))
    assert metrics["experiment"] == experiment and metrics["epochs"] == 1
