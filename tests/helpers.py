"""Helpers the tests share: tiny data sets, trainer and stage overrides for fast runs, hand-made sweep folders.

Plain functions and constants (fixtures live in conftest.py): ``from tests.helpers import ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def write_classification_set(
    root: Path, n_per_class: int = 6, size: int = 32, classes: tuple[str, ...] = ("Negative", "Positive"), seed: int = 0
) -> Path:
    """Noise photos; Positive ones carry a dark line, so a classifier has something to find."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image = rng.integers(100, 160, size=(size, size, 3), dtype=np.uint8)
            if label:
                row = rng.integers(2, size - 2)
                image[row - 1 : row + 1, :, :] = 20
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def write_segmentation_set(root: Path, n_images: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Noise photos with a dark square; the mask is that square."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image = rng.integers(120, 180, size=(size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, size=2)
        w = int(rng.integers(size // 8, size // 3))
        mask[y : y + w, x : x + w] = 255
        image[mask > 0] = 30
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


TINY_TRAINER = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def stage1_overrides(root: Path) -> list[str]:
    return [
        *TINY_TRAINER,
        "dataset=folder_cls",
        f"dataset.root={root}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
    ]


def stage2_overrides(root: Path, freeze: str = "encoder") -> list[str]:
    return [
        *TINY_TRAINER,
        f"freeze={freeze}",
        "dataset=folder_seg",
        f"dataset.root={root}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
    ]


def write_multirun(root: Path, task: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cfg = {
        "hydra": {
            "mode": "MULTIRUN",
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"task": task},
        }
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(cfg))


def write_job(root: Path, job: str, overrides: list[str], metrics: dict[str, Any] | None) -> Path:
    """One Hydra job dir; metrics=None means the job crashed before writing metrics.json."""
    d = root / job
    (d / ".hydra").mkdir(parents=True, exist_ok=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def finetune_metrics(
    freeze: str,
    seed: int,
    test: float,
    val: float | None = None,
    *,
    per_image: list[float] | None = None,
    train_images: int = 175,
    dataset: str = "steel_single",
    freeze_depth: int | None = None,
) -> dict[str, Any]:
    return {
        "stage": "finetune",
        "model": "unet_paper",
        "freeze": freeze,
        "freeze_depth": freeze_depth,
        "pretrain_task": None if freeze == "scratch" else "classification",
        "dataset": dataset,
        "experiment": "table1",
        "seed": seed,
        "train_images": train_images,
        "trainable_params": 3134433 if freeze == "encoder" else 7846657,
        "total_params": 7846657,
        "best_val_dice": test + 0.02 if val is None else val,
        "test_dice": test,
        "test_dice_per_image": per_image if per_image is not None else [test] * 4,
        "epochs": 100,
        "best_epoch": 50 + seed,
        "train_seconds": 100.0 + seed,
        "train_images_per_second": 40.0,
        "device": "cuda: NVIDIA H100",
        "precision": "bf16-mixed",
        "checkpoint_path": "/somewhere/best.ckpt",
        "extra_key_from_the_future": 1,
    }
