"""End to end on tiny data: configs compose, stage 1 writes an encoder, stage 2 loads and freezes it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file

from defectseg.finetune import run_finetune
from defectseg.models import FreezePolicy, parameter_counts
from defectseg.pretrain import run_pretrain
from defectseg.utils.errors import UserError
from tests.helpers import CONF_DIR, stage1_overrides, stage2_overrides

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
    for group in ("model", "freeze", "transfer", "trainer", "logger", "callbacks", "experiment")
}


#: What a group's ``_target_`` must build: composing alone would accept a target that builds the wrong thing.
BUILDS = {"model": torch.nn.Module, "trainer": L.Trainer, "logger": Logger}

STAGE_GROUPS = [
    (stage, group)
    for stage in ("pretrain", "finetune")
    for group in sorted(GROUP_OPTIONS)
    if not (stage == "pretrain" and group in ("freeze", "transfer"))
]


@pytest.mark.parametrize(("stage", "group"), STAGE_GROUPS)
def test_every_config_option_composes_and_instantiates(compose_config, stage, group, tmp_path):
    for option in GROUP_OPTIONS[group]:
        cfg = compose_config(stage, [f"{group}={option}"])
        node = cfg.get(group)
        assert node is not None or group in ("experiment", "freeze")  # both write into other nodes
        if group in ("model", "trainer", "logger") and "_target_" in node:
            # composing checks the option; instantiating on CPU checks its keys are real Trainer arguments
            overrides = (
                {"precision": "32-true", "enable_progress_bar": False, "accelerator": "cpu"}
                if group == "trainer"
                else {}
            )
            built = instantiate(node, **overrides)
            assert isinstance(built, BUILDS[group]), (option, type(built))
        if group == "callbacks":
            assert all(isinstance(instantiate(c), L.Callback) for c in node.values()), option


@pytest.mark.parametrize("dataset", ["synthetic_cls", "folder_cls"])
def test_stage1_datasets_compose(compose_config, dataset):
    cfg = compose_config("pretrain", [f"dataset={dataset}", "dataset.root=/some/where"])
    assert cfg.dataset._target_.endswith("ClassificationDataModule")
    assert instantiate(cfg.dataset).batch_size == cfg.dataset.batch_size


@pytest.mark.parametrize("dataset", ["synthetic_seg", "folder_seg"])
def test_stage2_datasets_compose(compose_config, dataset):
    cfg = compose_config("finetune", [f"dataset={dataset}", "dataset.root=/some/where"])
    assert cfg.dataset._target_.endswith("SegmentationDataModule")
    assert instantiate(cfg.dataset).image_size == cfg.dataset.image_size


def test_default_commands_train_the_papers_protocol(compose_config):
    """`make pretrain` / `make finetune` without arguments: the paper's protocol (100 epochs) with the recommended
    recipe (full fine-tuning); experiment=paper trains the paper's U-Net with its stage-1 encoder frozen
    (3,134,433 of 7,846,657 parameters train)."""
    cpu = {"accelerator": "cpu", "precision": "32-true", "logger": False, "enable_progress_bar": False}
    for stage in ("pretrain", "finetune"):
        assert instantiate(compose_config(stage).trainer, **cpu).max_epochs == 100
    cfg = compose_config("finetune")
    assert (cfg.transfer.name, cfg.transfer.freeze) == ("full_finetune", "none")
    paper = compose_config("finetune", ["experiment=paper"])
    assert (paper.transfer.name, paper.transfer.freeze) == ("frozen_encoder", "encoder")
    assert compose_config("finetune", ["experiment=paper", "transfer=staged"]).transfer.name == "staged"
    assert compose_config("finetune", ["experiment=paper", "freeze=none"]).transfer.name == "full_finetune"
    model = instantiate(paper.model)
    FreezePolicy(str(paper.transfer.freeze), paper.transfer.get("freeze_depth")).apply(model)
    counts = parameter_counts(model)
    assert (counts["trainable_params"], counts["total_params"]) == (3_134_433, 7_846_657)
    single = compose_config("finetune", ["dataset.synthetic.defect_set=crack", "dataset.synthetic.conditions=field"])
    assert single.dataset.root != cfg.dataset.root  # each generated set in a folder of its own
    assert single.dataset.name != cfg.dataset.name  # and a report row of its own


def test_quick_experiment_is_smaller_and_shares_the_stage1_set(compose_config):
    for stage in ("pretrain", "finetune"):
        paper, quick = compose_config(stage), compose_config(stage, ["experiment=quick"])
        if stage == "finetune":
            assert quick.trainer.max_epochs < paper.trainer.max_epochs
        else:  # sized in optimiser steps: 6,000 vs the paper's 100 epochs of 2,000 steps
            assert quick.train_steps == 6000 and paper.train_steps is None
        assert quick.dataset.image_size < paper.dataset.image_size
        assert quick.experiment_name == "quick"
    paper, quick = compose_config("pretrain", ["experiment=paper"]), compose_config("pretrain", ["experiment=quick"])
    assert quick.dataset.root == paper.dataset.root  # one generated stage-1 set serves both


def test_stage1_then_stage2_transfers_and_freezes_the_encoder(
    compose_config, classification_set, segmentation_set, tmp_path, monkeypatch
):
    stage1 = run_pretrain(compose_config("pretrain", stage1_overrides(classification_set), run_name="s1"))
    encoder_file = Path(stage1["encoder_weights"])
    assert encoder_file.name == "encoder.safetensors" and encoder_file.with_name("encoder.json").is_file()
    latest = tmp_path / "outputs" / "pretrain" / "latest"
    assert latest.is_symlink() and latest.resolve() == encoder_file.parent.resolve()
    metrics1 = json.loads((encoder_file.parent / "metrics.json").read_text())
    assert metrics1["stage"] == "pretrain" and metrics1["encoder_params"] == 4_712_224
    for key in ("best_val_accuracy", "best_val_auroc", "train_seconds", "train_images_per_second", "seed"):
        assert key in metrics1
    assert 0.0 < metrics1["encoder_weight_change"] < 1.0  # stage 1 trained the encoder, from its init

    cfg2 = compose_config("finetune", stage2_overrides(segmentation_set, "encoder"), run_name="s2")
    captured = {}
    original_apply = __import__("defectseg.models.freeze", fromlist=["FreezePolicy"]).FreezePolicy.apply

    def spy_apply(self, model):
        captured["decoder_before"] = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        captured["model"] = model
        return original_apply(self, model)

    monkeypatch.setattr("defectseg.models.freeze.FreezePolicy.apply", spy_apply)
    metrics2 = run_finetune(cfg2)

    stage1_weights = load_file(str(encoder_file))
    encoder_after = captured["model"].encoder.state_dict()
    assert set(stage1_weights) == set(encoder_after)
    assert all(torch.equal(stage1_weights[k], encoder_after[k].cpu()) for k in stage1_weights), (
        "the frozen encoder changed"
    )
    decoder_after = captured["model"].decoder.state_dict()
    assert any(not torch.equal(captured["decoder_before"][k], decoder_after[k].cpu()) for k in decoder_after), (
        "the decoder did not train"
    )

    assert metrics2["trainable_params"] == 3_134_433 and metrics2["total_params"] == 7_846_657
    assert metrics2["pretrained_encoder"]["path"] == str(encoder_file.resolve())
    saved = json.loads((Path(metrics2["output_dir"]) / "metrics.json").read_text())
    for key in (
        "stage",
        "model",
        "freeze",
        "seed",
        "trainable_params",
        "total_params",
        "best_val_dice",
        "test_dice",
        "epochs",
        "train_seconds",
        "train_images_per_second",
        "test_dice_per_image",
        "train_images",
    ):
        assert key in saved, key
    assert 0.0 <= saved["test_dice"] <= 1.0
    silent = saved["encoder_silent_channels"]
    assert len(silent) == 5 and all(0.0 <= share <= 1.0 for share in silent)
    assert len(saved["test_dice_per_image"]) == saved["test_images"]
    assert saved["encoder_level_change"] == [0.0] * 5  # frozen levels, batch-norm statistics included, never move
    assert len(saved["val_dice_by_epoch"]) == saved["epochs"]
    assert max(saved["val_dice_by_epoch"]) == pytest.approx(saved["best_val_dice"])
    assert (Path(metrics2["output_dir"]) / "split.json").is_file()
    assert list((Path(metrics2["output_dir"]) / "tensorboard").glob("events.out.tfevents.*"))


def test_scratch_trains_everything_without_an_encoder(compose_config, segmentation_set):
    metrics = run_finetune(
        compose_config("finetune", [*stage2_overrides(segmentation_set, "scratch"), "pretrained_encoder=/nonexistent"])
    )
    assert metrics["trainable_params"] == metrics["total_params"] == 7_846_657
    assert metrics["pretrained_encoder"] is None and metrics["freeze"] == "scratch"
    moved = metrics["encoder_level_change"]
    assert len(moved) == 5 and all(change > 0 for change in moved)  # every level trains from its random init


def test_transfer_without_encoder_says_run_pretrain(compose_config, segmentation_set, tmp_path):
    cfg = compose_config("finetune", stage2_overrides(segmentation_set, "encoder"))
    with pytest.raises(UserError, match=r"make pretrain.*pretrained_encoder="):
        run_finetune(cfg)
    assert not (tmp_path / "outputs" / "finetune" / "run" / "metrics.json").exists()


def test_job_names_keep_the_compared_axes_only():
    from defectseg.utils.naming import job_name

    name = job_name(
        [
            "transfer=staged",
            "transfer.unfreeze_at=0.5",
            "seed=2",
            "dataset.root=/very/long/path",
            "dataset.max_train_images=25",
            "trainer.max_epochs=3",
        ]
    )
    assert name == "labels-25+seed-2+transfer-staged+unfreeze_at-0.5"
    assert "/" not in job_name(["dataset=../some/where"]) and len(job_name([f"seed={'9' * 500}"])) <= 100
    # a job folder passes back as an override value, unquoted: checkpoint=<sweep>/<num>_<name>
    from hydra.core.override_parser.overrides_parser import OverridesParser

    weird = job_name(["pretrained_encoder=a/b=c,d", "model.encoder_weights=x y", "optim.lr=1e-4"])
    for folder in (f"outputs/demo/finetune/1_{name}", f"outputs/x/0_{weird}"):
        assert OverridesParser.create().parse_override(f"checkpoint={folder}").value() == folder


def test_same_seed_same_metrics_and_no_state_leaks_between_runs(compose_config, segmentation_set):
    """Two runs in one process (as in a sequential sweep): the second neither inherits RNG state nor logs into the
    first."""
    first = run_finetune(compose_config("finetune", stage2_overrides(segmentation_set, "scratch"), run_name="a"))
    second = run_finetune(compose_config("finetune", stage2_overrides(segmentation_set, "scratch"), run_name="b"))
    assert first["test_dice_per_image"] == second["test_dice_per_image"]
    assert first["best_val_dice"] == second["best_val_dice"]
    assert first["output_dir"] != second["output_dir"]
    assert list((Path(second["output_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
