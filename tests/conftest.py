"""Shared fixtures: tiny data sets made in tmp_path, and Hydra configs composed for fast runs.

Fixtures only: the helpers they use, and that tests import, are in :mod:`tests.helpers`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from defectseg.config import register
from tests.helpers import CONF_DIR, write_classification_set, write_segmentation_set


@pytest.fixture
def classification_set(tmp_path: Path) -> Path:
    return write_classification_set(tmp_path / "cls")


@pytest.fixture
def segmentation_set(tmp_path: Path) -> Path:
    return write_segmentation_set(tmp_path / "seg")


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a stage's config the way `python -m defectseg.<stage>` would, with paths in tmp_path."""

    def _compose(config_name: str, overrides: list[str] | None = None, run_name: str = "run") -> DictConfig:
        GlobalHydra.instance().clear()
        register()  # conf/<stage>.yaml extends <stage>_schema
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
