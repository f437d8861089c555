"""A real Hydra multirun, end to end: two stage-2 jobs (scratch, transfer) and the report over them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from defectseg.pretrain import run_pretrain
from tests.helpers import CONF_DIR, TINY_TRAINER

ROOT = Path(__file__).resolve().parents[1]


def test_multirun_scratch_vs_transfer_produces_report(compose_config, classification_set, segmentation_set, tmp_path):
    stage1 = run_pretrain(
        compose_config(
            "pretrain",
            [
                *TINY_TRAINER,
                "dataset=folder_cls",
                f"dataset.root={classification_set}",
                "dataset.image_size=32",
                "dataset.batch_size=4",
            ],
        )
    )
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "defectseg.finetune",
        "-m",
        "freeze=scratch,encoder",
        "dataset=folder_seg",
        f"dataset.root={segmentation_set}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
        f"pretrained_encoder={Path(stage1['encoder_weights']).parent}",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        *TINY_TRAINER,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    assert any("freeze-scratch" in job.name for job in jobs), "job folders are named by their overrides"

    report = subprocess.run(
        [sys.executable, "-m", "defectseg.report", str(sweep)], env=env, capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with open(sweep / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["freeze"] for row in rows) == ["encoder", "scratch"]
    assert {int(row["trainable_params"]) for row in rows} == {7_846_657, 3_134_433}
    assert (sweep / "report.md").read_text().count("|") > 10 and (sweep / "compare.png").stat().st_size > 5000


def test_launcher_configs_compose():
    for launcher, target in (("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")):
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("finetune", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
