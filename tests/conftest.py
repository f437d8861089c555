"""Shared fixtures: tiny data sets made in tmp_path, and Hydra configs composed for fast runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
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


@pytest.fixture
def classification_set(tmp_path: Path) -> Path:
    return write_classification_set(tmp_path / "cls")


@pytest.fixture
def segmentation_set(tmp_path: Path) -> Path:
    return write_segmentation_set(tmp_path / "seg")


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


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a stage's config the way `python -m defectseg.<stage>` would, with paths in tmp_path."""

    def _compose(config_name: str, overrides: list[str] | None = None, run_name: str = "run") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "outputs" / config_name / run_name)
            del cfg.hydra
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
