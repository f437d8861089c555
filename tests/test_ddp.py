"""Two-process DDP on CPU (gloo), both stages, through the real entry points in a subprocess.

Checks that val/test Dice are the whole set's (gathered over the ranks, the DistributedSampler's
padding removed), that test_dice_per_image covers every test image in order, and that only
rank 0 writes run files, the stage-1 encoder and the ``latest`` pointer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectseg.data.datamodules import SegmentationDataModule
from defectseg.models import unet_paper
from defectseg.training.metrics import DefectDice
from defectseg.training.modules import SegmentationTask
from tests.helpers import write_classification_set, write_segmentation_set

REPO = Path(__file__).resolve().parents[1]

# Runs a stage's Hydra main, recording every file each rank writes through defectseg.utils.io.
# Lightning starts rank 1 by re-running this same script with the same arguments.
WRITE_SPY = """
import os, sys
sys.path.insert(0, os.environ["DEFECTSEG_REPO"])
import defectseg.utils.io as io

def record(path):
    rank = os.environ.get("LOCAL_RANK", "0")
    with open(os.path.join(os.environ["DEFECTSEG_WRITE_LOG"], "rank" + rank + ".txt"), "a") as log:
        log.write(str(path) + "\\n")

atomic_writer, point_link = io.atomic_writer, io.point_link
def spy_writer(path, *args, **kwargs):
    record(path)
    return atomic_writer(path, *args, **kwargs)
def spy_link(link, target):
    record(link)
    return point_link(link, target)
io.atomic_writer, io.point_link = spy_writer, spy_link

import runpy
runpy.run_module(os.environ["DEFECTSEG_STAGE"], run_name="__main__")  # as `python -m`, but __main__ stays this spy
"""

DDP_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "dataset.image_size=32",
    "dataset.batch_size=2",
    "dataset.num_workers=0",
    "callbacks=none",
]


def write_split_segmentation_set(root: Path) -> Path:
    """train/ val/ test/ as given; val and test hold 5 images (odd: the sampler pads rank 1 with image 0),
    every other one with an empty mask, so the two ranks' halves score differently."""
    write_segmentation_set(root / "train", n_images=8, seed=1)
    for split, seed in (("val", 2), ("test", 3)):
        write_segmentation_set(root / split, n_images=5, seed=seed)
        for i in range(0, 5, 2):
            Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(root / split / "masks" / f"{i:03d}.png")
    return root


def run_stage(stage: str, overrides: list[str], tmp_path: Path, write_log: Path) -> None:
    spy = tmp_path / "write_spy.py"
    spy.write_text(WRITE_SPY)
    write_log.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DEFECTSEG_REPO": str(REPO),
        "DEFECTSEG_STAGE": f"defectseg.{stage}",
        "DEFECTSEG_WRITE_LOG": str(write_log),
        "PYTHONPATH": str(REPO),
    }
    env.pop("LOCAL_RANK", None)
    command = [sys.executable, str(spy), *DDP_CPU, *overrides, f"paths.root_dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def independent_dice(checkpoint: Path, root: Path, split: str) -> list[float]:
    """Per-image Dice of the checkpoint on one split, on one process, in file order."""
    task = SegmentationTask(unet_paper(), channels_last=False)
    task.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    task.eval()
    datamodule = SegmentationDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0)
    datamodule.setup("fit")
    dice = DefectDice()
    with torch.no_grad():
        for item in datamodule.datasets[split]:
            probability = torch.sigmoid(task(item["image"][None]))
            dice.update(probability > 0.5, item["mask"][None] > 0)
    return dice.per_image().tolist()


@pytest.mark.ddp
def test_ddp_on_two_cpu_processes_reduces_metrics_and_only_rank0_writes(tmp_path):
    cls_root = write_classification_set(tmp_path / "cls", n_per_class=6)
    seg_root = write_split_segmentation_set(tmp_path / "seg")
    pretrain_dir, finetune_dir = tmp_path / "outputs" / "pretrain_run", tmp_path / "outputs" / "finetune_run"
    writes = tmp_path / "writes"

    run_stage(
        "pretrain",
        ["dataset=folder_cls", f"dataset.root={cls_root}", f"hydra.run.dir={pretrain_dir}"],
        tmp_path,
        writes,
    )
    run_stage(
        "finetune",
        [
            "freeze=encoder",
            "dataset=folder_seg",
            f"dataset.root={seg_root}",
            f"pretrained_encoder={pretrain_dir}",
            f"hydra.run.dir={finetune_dir}",
        ],
        tmp_path,
        writes,
    )

    # Only rank 0 wrote, and it wrote everything a stage leaves behind.
    assert not (writes / "rank1.txt").exists(), (writes / "rank1.txt").read_text()
    written = {Path(line).resolve() for line in (writes / "rank0.txt").read_text().split()}
    latest = tmp_path / "outputs" / "pretrain" / "latest"
    for expected in (
        pretrain_dir / "metrics.json",
        pretrain_dir / "encoder.safetensors",
        pretrain_dir / "encoder.json",
        pretrain_dir / "config.yaml",
        finetune_dir / "metrics.json",
        finetune_dir / "split.json",
    ):
        assert expected.resolve() in written
    assert latest.resolve() == pretrain_dir.resolve()

    # Dice over the whole val and test sets, as one process computes it from the same weights.
    metrics = json.loads((finetune_dir / "metrics.json").read_text())
    test_scores = independent_dice(finetune_dir / "checkpoints" / "best.ckpt", seg_root, "test")
    val_scores = independent_dice(finetune_dir / "checkpoints" / "best.ckpt", seg_root, "val")
    assert metrics["test_images"] == len(metrics["test_dice_per_image"]) == 5
    assert metrics["test_dice_per_image"] == pytest.approx(test_scores, abs=1e-5)
    assert metrics["test_dice"] == pytest.approx(np.mean(test_scores), abs=1e-5)
    assert metrics["best_val_dice"] == pytest.approx(np.mean(val_scores), abs=1e-5)
    # The check can fail: rank 0's share alone (images 0, 2, 4) or the padded 6 scores give other values.
    rank0_half, padded = np.mean(test_scores[0::2]), np.mean(test_scores + test_scores[:1])
    assert abs(rank0_half - np.mean(test_scores)) > 1e-3 or abs(padded - np.mean(test_scores)) > 1e-3
