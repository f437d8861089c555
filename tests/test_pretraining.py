"""Stage-1 objectives (pretrain_task=): each trains a step on tiny data and writes an encoder stage 2 loads;
self-supervision never reads a mask; masking and its loss; balanced sources; the report's pretrain_task axis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from defectseg.config import validate_config
from defectseg.data import layouts, readers
from defectseg.data.datamodules import ClassificationDataModule, SegmentationDataModule, UnlabelledImageDataModule
from defectseg.finetune import run_finetune
from defectseg.models.encoder_io import DECODER_WEIGHTS_NAME, EncoderMismatchError, load_decoder, save_decoder
from defectseg.models.segmentation import unet_paper
from defectseg.pretrain import run_pretrain
from defectseg.report import aggregate, collect_runs
from defectseg.training.pretraining import MaskedReconstructionTask, masked_l1, random_patch_mask
from defectseg.utils.errors import UserError
from tests.helpers import (
    TINY_TRAINER,
    finetune_metrics,
    write_classification_set,
    write_job,
    write_multirun,
    write_segmentation_set,
)

SMALL = ["dataset.image_size=32", "dataset.batch_size=4"]
STAGE1_DATA = {
    "classification": lambda cls, seg: ["dataset=folder_cls", f"dataset.root={cls}"],
    "segmentation": lambda cls, seg: ["dataset=folder_seg", f"dataset.root={seg}"],
    "self_supervised": lambda cls, seg: ["dataset=folder_seg", f"dataset.root={seg}", "pretrain_task.patch_size=8"],
}
REPO = Path(__file__).resolve().parents[1]
DECODER_PARTS = {
    "classification": None,
    "segmentation": ["decoder", "segmentation_head"],
    "self_supervised": ["decoder"],
}


@pytest.mark.parametrize("objective", sorted(STAGE1_DATA))
def test_each_objective_writes_an_encoder_that_stage2_loads(
    compose_config, classification_set, segmentation_set, objective
):
    overrides = (
        TINY_TRAINER
        + SMALL
        + [f"pretrain_task={objective}"]
        + STAGE1_DATA[objective](classification_set, segmentation_set)
    )
    stage1 = run_pretrain(compose_config("pretrain", overrides, run_name="s1"))
    run_dir = Path(stage1["encoder_weights"]).parent
    info = json.loads((run_dir / "encoder.json").read_text())
    assert info["pretrain"]["pretrain_task"] == objective and stage1["pretrain_task"] == objective
    assert stage1["best_val_loss"] is not None and stage1["encoder_weight_change"] > 0
    assert (run_dir / DECODER_WEIGHTS_NAME).is_file() == (DECODER_PARTS[objective] is not None)

    init_decoder = DECODER_PARTS[objective] is not None
    stage2_overrides = (
        TINY_TRAINER
        + SMALL
        + [
            "freeze=encoder",
            "dataset=folder_seg",
            f"dataset.root={segmentation_set}",
            f"pretrained_encoder={run_dir}",
            f"init_decoder={str(init_decoder).lower()}",
        ]
    )
    stage2 = run_finetune(compose_config("finetune", stage2_overrides, run_name="s2"))
    assert stage2["pretrain_task"] == objective
    assert stage2["pretrained_encoder"]["path"] == str((run_dir / "encoder.safetensors").resolve())
    assert stage2["init_decoder"] == DECODER_PARTS[objective]


def test_reuse_keeps_a_finished_stage1_refuses_another_config_and_continues_an_unfinished_one(
    compose_config, classification_set, monkeypatch, caplog
):
    """make compare / label-efficiency share one long stage 1 through reuse=true: never trained twice, never
    overwritten."""
    overrides = TINY_TRAINER + SMALL + STAGE1_DATA["classification"](classification_set, None) + ["reuse=true"]
    first = run_pretrain(compose_config("pretrain", overrides, run_name="s1"))
    run_dir = Path(first["encoder_weights"]).parent
    written = {name: (run_dir / name).read_bytes() for name in ("encoder.safetensors", "metrics.json", "config.yaml")}

    import defectseg.pretrain as pretrain_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage 1 of the same config was trained again")

    with monkeypatch.context() as patched:
        patched.setattr(pretrain_module, "Run", no_training)
        again = run_pretrain(
            compose_config("pretrain", [*overrides, "trainer.enable_progress_bar=true"], run_name="s1")
        )  # how it runs may change
        assert again == first
        with pytest.raises(
            UserError,
            match=r"reuse: the config differs from the finished run's .*optim\.lr: 0\.0001 -> 0\.001.*STAGE1_DIR",
        ):
            run_pretrain(compose_config("pretrain", [*overrides, "optim.lr=1e-3"], run_name="s1"))
    assert {name: (run_dir / name).read_bytes() for name in written} == written, (
        "a refused reuse changed the finished run"
    )

    copied = run_dir.with_name("s1_copy")  # a stage 1 copied or moved elsewhere is still the same run
    shutil.copytree(run_dir, copied)
    assert run_pretrain(compose_config("pretrain", overrides, run_name="s1_copy")) == first

    (run_dir / "metrics.json").unlink()  # as if killed after the last epoch's checkpoint
    with caplog.at_level("INFO", logger="defectseg.training.checkpoints"):
        continued = run_pretrain(compose_config("pretrain", overrides, run_name="s1"))
    assert "holds an unfinished run; continuing it" in caplog.text and "resuming from" in caplog.text
    assert continued["epochs"] == first["epochs"] and continued["best_val_loss"] == pytest.approx(
        first["best_val_loss"]
    )
    assert (run_dir / "metrics.json").is_file()


def test_a_refused_reuse_from_the_command_line_leaves_the_finished_runs_hydra_record(compose_config, tmp_path):
    """Hydra writes .hydra/ before the stage runs; for reuse=true into a finished run it must not
    (KeepFinishedRunFiles)."""
    finished_config = compose_config("pretrain", ["optim.lr=0.5"])  # paths under tmp_path, as the command below
    run_dir = tmp_path / "stage1"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- how the finished run was made\n")
    (run_dir / "encoder.safetensors").write_bytes(b"weights")
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(finished_config, resolve=True))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectseg.pretrain",
            "reuse=true",
            f"hydra.run.dir={run_dir}",
            f"paths.root_dir={tmp_path}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        result.returncode != 0 and "reuse: the config differs from the finished run's" in result.stderr + result.stdout
    )
    assert "optim.lr: 0.5 -> 0.0001" in result.stderr + result.stdout
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- how the finished run was made\n"
    assert sorted(path.name for path in (run_dir / ".hydra").iterdir()) == ["overrides.yaml"]


def test_init_decoder_without_a_decoder_file_names_it(compose_config, classification_set, segmentation_set):
    stage1 = run_pretrain(
        compose_config(
            "pretrain", TINY_TRAINER + SMALL + STAGE1_DATA["classification"](classification_set, None), run_name="s1"
        )
    )
    run_dir = Path(stage1["encoder_weights"]).parent
    overrides = (
        TINY_TRAINER
        + SMALL
        + [
            "dataset=folder_seg",
            f"dataset.root={segmentation_set}",
            f"pretrained_encoder={run_dir}",
            "init_decoder=true",
        ]
    )
    with pytest.raises(UserError, match=DECODER_WEIGHTS_NAME):
        run_finetune(compose_config("finetune", overrides, run_name="s2"))


def test_decoder_file_of_another_shape_is_refused(tmp_path):
    save_decoder(unet_paper(channels=(8, 16, 32, 64, 128)), tmp_path, {"name": "unet_paper"}, include_head=True)
    model = unet_paper(channels=(4, 8, 16, 32, 64))
    with pytest.raises(EncoderMismatchError, match=DECODER_WEIGHTS_NAME):
        load_decoder(model, tmp_path, {"name": "unet_paper"})
    with pytest.raises(EncoderMismatchError, match="architecture"):
        load_decoder(model, tmp_path, {"name": "other"})


def test_self_supervised_never_reads_a_mask(compose_config, segmentation_set, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a mask was read")

    monkeypatch.setattr(readers, "read_mask_values", refuse)
    monkeypatch.setattr(readers, "read_mask", refuse)
    monkeypatch.setattr(layouts.MaskFile, "load", refuse)
    overrides = (
        TINY_TRAINER
        + SMALL
        + [
            "pretrain_task=self_supervised",
            "pretrain_task.patch_size=8",
            "dataset=folder_seg",
            f"dataset.root={segmentation_set}",
        ]
    )
    metrics = run_pretrain(compose_config("pretrain", overrides))
    assert metrics["pretrain_task"] == "self_supervised" and metrics["train_images"] > 0


def test_unlabelled_sources_take_only_the_targets_train_split(tmp_path):
    """The target's train split exactly as stage 2 computes it (same seed, cap); its val/test photos never appear."""
    seg_root = write_segmentation_set(tmp_path / "seg", n_images=20)
    cls_root = write_classification_set(tmp_path / "cls", n_per_class=4)
    stage2_args = {"root": str(seg_root), "split_fractions": (0.6, 0.2, 0.2), "split_seed": 3, "train_split_size": 8}
    target = SegmentationDataModule(**stage2_args)
    unlabelled = UnlabelledImageDataModule(
        sources={
            "target": {"dataset": SegmentationDataModule(**stage2_args)},
            "cracks": {"dataset": ClassificationDataModule(root=str(cls_root)), "splits": ["train", "val", "test"]},
        },
        image_size=32,
        batch_size=4,
        split_fractions=(0.75, 0.25, 0.0),
    )
    listed, _ = target.list_samples()
    train = {str(path) for path, _ in listed["train"]}
    held_out = {str(path) for split in ("val", "test") for path, _ in listed[split]}
    unlabelled.setup("fit")
    used = [path for split in ("train", "val") for path in unlabelled.split_files[split]]
    from_target = {path for path in used if path.startswith(str(seg_root))}
    assert from_target == train and len(train) == 8 and not from_target & held_out
    assert sum(path.startswith(str(cls_root)) for path in used) == 8  # every split of a non-target source


def test_patch_mask_hides_the_asked_share_in_whole_patches():
    mask = random_patch_mask(6, 64, 96, 16, 0.6, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (6, 1, 64, 96) and mask.dtype == torch.bool
    assert mask.float().mean().item() == pytest.approx(0.6, abs=1 / 24)
    patches = mask.view(6, 4, 16, 6, 16).float().mean(dim=(2, 4))
    assert set(patches.unique().tolist()) <= {0.0, 1.0}  # every patch wholly hidden or visible


def test_reconstruction_loss_ignores_visible_pixels():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    mask = random_patch_mask(2, 32, 32, 8, 0.5, generator=torch.Generator().manual_seed(1))
    prediction = torch.rand(2, 3, 32, 32)
    changed = torch.where(mask, prediction, prediction + 5.0)
    assert masked_l1(prediction, target, mask) == pytest.approx(masked_l1(changed, target, mask).item())
    hidden_changed = torch.where(mask, prediction + 5.0, prediction)
    assert masked_l1(hidden_changed, target, mask) > masked_l1(prediction, target, mask) + 1.0


def test_hidden_squares_get_the_fill_colour_not_black():
    task = MaskedReconstructionTask(
        unet_paper(channels=(4, 8, 16, 32, 64), num_classes=3), patch_size=8, channels_last=False
    )
    images = torch.rand(1, 3, 32, 32)
    mask = random_patch_mask(1, 32, 32, 8, 0.5)
    hidden = task.hide(images, mask)
    assert torch.equal(hidden[~mask.expand_as(hidden)], images[~mask.expand_as(images)])
    mean = task.model.normalize.mean.view(3)
    assert torch.allclose(hidden[0, :, mask[0, 0]].T, mean.expand(int(mask.sum()), 3))


def test_balanced_sources_draw_each_about_half(tmp_path):
    small = write_classification_set(tmp_path / "small", n_per_class=5, size=16)
    large = write_classification_set(tmp_path / "large", n_per_class=50, size=16, seed=1)
    datamodule = ClassificationDataModule(
        root=[str(small), str(large)],
        image_size=16,
        batch_size=8,
        num_workers=0,
        split_fractions=(0.8, 0.1, 0.1),
        balance_sources=True,
        samples_per_epoch=4000,
    )
    datamodule.setup("fit")
    sampler = datamodule.train_dataloader().sampler
    torch.manual_seed(0)
    drawn = list(sampler)
    sources = datamodule.sources_of(datamodule.datasets["train"])
    share = Counter(sources[drawn].tolist())
    assert len(drawn) == 4000
    assert share[0] / 4000 == pytest.approx(0.5, abs=0.04)


def test_report_has_one_row_per_pretrain_task_and_freeze(tmp_path):
    """A sweep over two stage-1 runs x freeze x seed, plus scratch: one row per (pretrain_task, freeze), scratch the
    reference."""
    job = 0
    for seed in (0, 1):
        for task, freeze, dice in (
            ("classification", "encoder", 0.6),
            ("classification", "none", 0.65),
            ("self_supervised", "encoder", 0.7),
            ("self_supervised", "none", 0.75),
            (None, "scratch", 0.5),
        ):
            run = finetune_metrics(freeze, seed, dice + 0.01 * seed)
            run["pretrain_task"] = task
            write_job(tmp_path, f"{job}_freeze={freeze},seed={seed}", [f"freeze={freeze}", f"seed={seed}"], run)
            job += 1
    rows = aggregate(collect_runs(tmp_path)[0], n_resamples=200)
    keys = [(row["pretrain_task"], row["freeze"], row["n_seeds"]) for row in rows]
    assert sorted(keys, key=str) == sorted(
        [
            (None, "scratch", 2),
            ("classification", "encoder", 2),
            ("classification", "none", 2),
            ("self_supervised", "encoder", 2),
            ("self_supervised", "none", 2),
        ],
        key=str,
    )
    by_key = {(row["pretrain_task"], row["freeze"]): row for row in rows}
    assert by_key[("self_supervised", "encoder")]["gain_abs"] == pytest.approx(0.2)
    assert by_key[("classification", "none")]["gain_abs"] == pytest.approx(0.15)
    from defectseg.report import display_mode

    labels = {display_mode(row, rows) for row in rows}
    assert len(labels) == 5 and "scratch" in labels


def test_every_mode_of_a_large_grid_gets_its_own_colour():
    """3 pretrain tasks x 3 freeze modes x decoder starts + scratch: no two bars share a colour (none repeats
    scratch's grey)."""
    from defectseg.report import display_mode, mode_colours, mode_label

    rows = [
        {"freeze": "scratch", "pretrain_task": None, "init_decoder": False, "freeze_depth": None, "mode": "scratch"}
    ]
    for task in (
        "classification",
        "segmentation",
        "self_supervised",
        "other_a",
        "other_b",
        "other_c",
        "other_d",
        "other_e",
    ):
        for freeze in ("encoder", "partial", "none"):
            for decoder in (False, True):
                rows.append(
                    {
                        "freeze": freeze,
                        "pretrain_task": task,
                        "init_decoder": decoder,
                        "freeze_depth": 3 if freeze == "partial" else None,
                        "mode": mode_label(freeze, 3 if freeze == "partial" else None, decoder),
                    }
                )
    colours = mode_colours(rows)
    assert len(colours) == len({display_mode(r, rows) for r in rows}) == 49
    assert len(set(colours.values())) == 49
    scratch = colours[display_mode(rows[0], rows)]
    frozen_classifier = colours[display_mode(rows[1], rows)]
    assert (scratch, frozen_classifier) == ("#8c8c8c", "#1f77b4")  # the paper's two modes keep their usual colours


def test_report_keeps_a_stage1_decoder_start_apart(tmp_path):
    """init_decoder=true is another training than the encoder alone: its own row, never averaged with it."""
    job = 0
    for seed in (0, 1):
        for freeze, decoder, dice in (
            ("encoder", None, 0.6),
            ("encoder", {"path": "decoder.safetensors"}, 0.7),
            ("scratch", None, 0.5),
        ):
            run = finetune_metrics(freeze, seed, dice)
            run["pretrain_task"], run["init_decoder"] = (None if freeze == "scratch" else "segmentation"), decoder
            write_job(tmp_path, f"{job}_freeze={freeze},seed={seed}", [f"freeze={freeze}", f"seed={seed}"], run)
            job += 1
    rows = aggregate(collect_runs(tmp_path)[0], n_resamples=200)
    by_mode = {row["mode"]: row for row in rows}
    assert set(by_mode) == {"scratch", "transfer-frozen encoder", "transfer-frozen encoder + stage-1 decoder"}
    assert by_mode["transfer-frozen encoder + stage-1 decoder"]["gain_abs"] == pytest.approx(0.2)
    assert by_mode["transfer-frozen encoder"]["n_seeds"] == 2


def test_a_stopped_sweep_continued_beside_it_is_not_missing(tmp_path):
    """A sweep stopped after its first job, its other jobs run by a second sweep: nothing is missing, only the job
    nobody ran."""
    write_multirun(tmp_path / "first", ["freeze=scratch,encoder", "seed=0,1"])
    write_job(
        tmp_path / "first", "0_freeze=scratch,seed=0", ["freeze=scratch", "seed=0"], finetune_metrics("scratch", 0, 0.5)
    )
    write_multirun(tmp_path / "rest", ["freeze=encoder", "seed=0,1"])
    write_job(
        tmp_path / "rest", "0_freeze=encoder,seed=0", ["freeze=encoder", "seed=0"], finetune_metrics("encoder", 0, 0.6)
    )
    write_job(
        tmp_path / "rest", "1_freeze=encoder,seed=1", ["freeze=encoder", "seed=1"], finetune_metrics("encoder", 1, 0.6)
    )
    runs, missing = collect_runs(tmp_path)
    assert len(runs) == 3
    assert [m["overrides"] for m in missing] == [["freeze=scratch", "seed=1"]]


def test_side_by_side_sweeps_report_their_own_never_launched_jobs(tmp_path):
    """make compare-pretrain: finetune/transfer (encoders x freeze) and finetune/scratch, each with its
    multirun.yaml."""
    write_multirun(tmp_path / "transfer", ["freeze=encoder", "pretrained_encoder=A,B", "seed=0"])
    write_multirun(tmp_path / "scratch", ["freeze=scratch", "seed=0,1"])
    write_job(
        tmp_path / "transfer",
        "0_encoder_from=A",
        ["freeze=encoder", "pretrained_encoder=A", "seed=0"],
        finetune_metrics("encoder", 0, 0.6),
    )
    write_job(
        tmp_path / "scratch",
        "0_freeze=scratch,seed=0",
        ["freeze=scratch", "seed=0"],
        finetune_metrics("scratch", 0, 0.5),
    )
    write_job(
        tmp_path / "scratch",
        "1_freeze=scratch,seed=1",
        ["freeze=scratch", "seed=1"],
        finetune_metrics("scratch", 1, 0.5),
    )
    runs, missing = collect_runs(tmp_path)
    assert len(runs) == 3
    assert [m["overrides"] for m in missing] == [["freeze=encoder", "pretrained_encoder=B", "seed=0"]]


@pytest.mark.parametrize(
    ("objective", "dataset_target"),
    [
        ("self_supervised", "UnlabelledImageDataModule"),
        ("segmentation", "SegmentationDataModule"),
        ("classification", "ClassificationDataModule"),
    ],
)
def test_each_objective_composes_and_validates_with_no_other_key(compose_config, objective, dataset_target):
    cfg = compose_config("pretrain", [f"pretrain_task={objective}"])
    validate_config(cfg, "pretrain")
    assert cfg.pretrain_task.name == objective and cfg.dataset._target_.endswith(dataset_target)


def test_embedded_ssl_data_is_concrete_plus_the_targets_train_split(compose_config):
    cfg = compose_config("pretrain", ["pretrain_task=self_supervised", "experiment=quick"])
    sources = cfg.dataset.sources
    assert sources.target.splits == ["train"] and sources.target.dataset.name == compose_config("finetune").dataset.name
    assert sources.concrete.dataset.synthetic.n_per_class == 20000  # experiment=quick sizes it as for stage 1
    cfg = compose_config("pretrain", ["pretrain_task=segmentation", "experiment=quick"])
    assert cfg.dataset.synthetic.kind == "crack_segmentation" and cfg.dataset.synthetic.n_per_class == 20000


def test_mismatched_data_set_is_refused_with_the_task(compose_config, segmentation_set):
    overrides = (
        TINY_TRAINER
        + SMALL
        + ["pretrain_task=classification", "dataset=folder_seg", f"dataset.root={segmentation_set}"]
    )
    with pytest.raises(UserError, match="pretrain_task=classification needs a classification data set"):
        run_pretrain(compose_config("pretrain", overrides))


def test_crack_mask_set_has_the_classification_photos(tmp_path):
    from defectseg.data import synthetic

    seg = synthetic.ensure_crack_segmentation(tmp_path / "seg", n_per_class=2, size=32, progress=False)
    cls = synthetic.ensure_crack_classification(tmp_path / "cls", n_per_class=2, size=32, progress=False)
    image = readers.read_image(seg / "images" / "00002.png")  # crack photo 1
    assert np.array_equal(image, readers.read_image(cls / "Positive" / "00001.png"))
    assert (
        readers.read_mask(seg / "masks" / "00002.png").any()
        and not readers.read_mask(seg / "masks" / "00003.png").any()
    )
