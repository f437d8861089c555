"""Config mistakes fail before any work, in one line naming the key, with "did you mean" for a typo."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

from defectseg.config import validate_config
from defectseg.config.entry import composition_problem
from defectseg.finetune import run_finetune
from defectseg.pretrain import run_pretrain
from defectseg.utils.errors import ConfigError, UserError
from tests.helpers import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def problem(compose_config, stage: str, overrides: list[str]) -> str:
    """What the user reads: Hydra's composition error as one line, or the validation's message."""
    try:
        validate_config(compose_config(stage, overrides), stage)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as error:
        return composition_problem(error)
    except ConfigError as error:
        return str(error)
    raise AssertionError(f"{stage} {overrides}: accepted")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_shipped_configs_are_valid(compose_config, stage, experiment):
    validate_config(compose_config(stage, [f"experiment={experiment}"] if experiment else []), stage)


@pytest.mark.parametrize("stage", ["predict", "export", "check_data"])
def test_shipped_configs_of_the_other_commands_are_valid(compose_config, stage):
    validate_config(compose_config(stage, ["input=photo.png"] if stage == "predict" else []), stage)


@pytest.mark.parametrize(
    "choice",
    [
        *(f"freeze={old}" for old in ("scratch", "encoder", "none", "partial")),
        *(f"transfer={path.stem}" for path in sorted((Path(CONF_DIR) / "transfer").glob("*.yaml"))),
    ],
)
def test_every_transfer_recipe_and_old_freeze_name_is_valid(compose_config, choice):
    validate_config(compose_config("finetune", [choice, "dataset=folder_seg", "dataset.root=/data"]), "finetune")


@pytest.mark.parametrize(
    ("stage", "override", "expected"),
    [
        (
            "finetune",
            "trainer.max_epoch=3",
            r"^trainer\.max_epoch: unknown key \(did you mean trainer\.max_epochs\?\)$",
        ),
        (
            "finetune",
            "+trainer.max_epoch=3",
            r"^trainer\.max_epoch: unknown key \(did you mean trainer\.max_epochs\?\)$",
        ),
        (
            "finetune",
            "optim.learning_rate=0.1",
            r"^optim\.learning_rate: unknown key \(known here: lr, weight_decay\)$",
        ),
        (
            "finetune",
            "+optim.learning_rate=0.1",
            r"^optim\.learning_rate: unknown key \(known here: lr, weight_decay\)",
        ),
        ("finetune", "+lr=0.1", r"^lr: unknown key \(did you mean optim\.lr\?\)$"),
        (
            "finetune",
            "dataset.image_sze=64",
            r"^dataset\.image_sze: unknown key \(did you mean dataset\.image_size\?\)$",
        ),
        (
            "finetune",
            "+dataset.image_sze=64",
            r"^dataset\.image_sze: unknown key \(did you mean dataset\.image_size\?\)",
        ),
        (
            "finetune",
            "dataset.augment.brightnes=0.1",
            r"^dataset\.augment\.brightnes: .*did you mean dataset\.augment\.brightness\?",
        ),
        (
            "finetune",
            "+dataset.augment.brightnes=0.1",
            r"^dataset\.augment\.brightnes: .*did you mean dataset\.augment\.brightness\?",
        ),
        ("finetune", "+dataset.augment.noise_p=2", r"^dataset\.augment\.noise_p: must lie between 0 and 1, got 2$"),
        (
            "finetune",
            "transfer.freeze_dept=2",
            r"^transfer\.freeze_dept: unknown key \(did you mean transfer\.freeze_depth\?\)$",
        ),
        (
            "finetune",
            "+transfer.freeze_dept=2",
            r"^transfer\.freeze_dept: unknown key \(did you mean transfer\.freeze_depth\?\)$",
        ),
        ("finetune", "transfr=staged", r"^transfr: unknown key \(did you mean transfer\?\)$"),
        ("finetune", "transfer=stagd", r"^transfer=stagd: no such option \(did you mean transfer=staged\?"),
        (
            "finetune",
            "experiment=quik",
            r"^experiment=quik: no such option \(did you mean experiment=quick\? choose from",
        ),
        ("finetune", "model=unet_papr", r"^model=unet_papr: no such option \(did you mean model=unet_paper\?"),
        ("pretrain", "+task.threshold=0.5", r"^task: unknown key"),
        ("pretrain", "+pretrain_task.mask_rato=0.5", r"^pretrain_task\.mask_rato: unknown key"),
        (
            "pretrain",
            "pretrain_task=self_supervised pretrain_task.mask_ratio=1.5",
            r"pretrain_task\.mask_ratio: must lie strictly",
        ),
        ("finetune", "seed=abc", r"^seed: expected an integer, got 'abc'$"),
        ("finetune", "seed=-1", r"^seed: must lie between 0 and"),
        ("finetune", "trainer.max_epochs=2.5", r"^trainer\.max_epochs: expected an integer or null, got 2\.5"),
        ("finetune", "dataset.batch_size=[4]", r"^dataset\.batch_size: expected an integer, got \[4\]"),
        ("finetune", "optim.lr=-0.001", r"^optim\.lr: must be a positive number, got -0\.001$"),
        ("finetune", "optim.weight_decay=-1", r"^optim\.weight_decay: must be at least 0"),
        ("finetune", "task.threshold=1.0", r"^task\.threshold: must lie strictly between 0 and 1"),
        ("finetune", "task.bce_weight=0 task.dice_weight=0", r"^task\.bce_weight, task\.dice_weight: both are 0"),
        (
            "pretrain",
            "pretrain_task=segmentation pretrain_task.bce_weight=0 pretrain_task.dice_weight=0",
            r"^pretrain_task\.bce_weight, pretrain_task\.dice_weight: both are 0",
        ),
        (
            "finetune",
            "dataset.split_fractions=[0.7,0.2,0.2]",
            r"dataset\.split_fractions=\[0\.7, 0\.2, 0\.2\] must be non-negative and sum to 1",
        ),
        ("pretrain", "dataset.image_size=100", r"^dataset\.image_size: 100 is not divisible by 16.*use 96 or 112"),
        ("finetune", "transfer.freeze=frozen", r"^transfer\.freeze='frozen' is not one of"),
        ("finetune", "transfer.unfreeze_at=2.0", r"^transfer\.unfreeze_at is a share of the run between 0 and 1"),
        (
            "finetune",
            "transfer.unfreeze_at=0.5",
            r"^transfer\.unfreeze_at unfreezes frozen levels, but transfer\.freeze=none",
        ),
        (
            "finetune",
            "transfer=partial_frozen transfer.freeze_depth=9",
            r"^transfer\.freeze_depth: 9 exceeds the encoder's 5 levels$",
        ),
        ("finetune", "task.class_weights=heavy", r"^task\.class_weights: must be null, frequency or a list"),
        ("predict", "scale=big", r"^scale must be auto, fit or a positive factor"),
        ("predict", "min_defect_area_px=-3", r"^min_defect_area_px must be auto or a whole number"),
        ("predict", "mm_per_px=-1", r"^mm_per_px must be positive"),
        (
            "predict",
            "report.preview_pixels=9",
            r"^report\.preview_pixels: unknown key \(did you mean report\.preview_px\?\)$",
        ),
        ("pretrain", "head.pooling=mean", r"head\.pooling must be avg, max or avgmax"),
        ("pretrain", "trainer.precision=17", r"^trainer\.precision: expected one of"),
        (
            "finetune",
            "+callbacks.extra._target_=no_such_module.Callback",
            r"^callbacks\.extra\._target_: cannot import 'no_such_module\.Callback'",
        ),
        ("predict", "threshold=1.5", r"^threshold must lie strictly between 0 and 1, got 1\.5$"),
        ("predict", "input=x save.probability=tif", r"^save\.probability must be none, png or npy, got tif$"),
        (
            "predict",
            "input=x tiling.overlaps=0.5",
            r"^tiling\.overlaps: unknown key \(did you mean tiling\.overlap\?\)$",
        ),
        ("predict", "input=x threshold=abc", r"^threshold: must be a number between 0 and 1 \(or a list"),
        ("predict", "input=x classes.masks=maybe", r"^classes\.masks must be true or false, got maybe$"),
        ("predict", "input=x classes.linear=crack", r"^classes\.linear=crack: give null \(auto\) or a list"),
        ("predict", "input=x save.overlay=maybe", r"^save\.overlay: expected true/false, got 'maybe'$"),
        (
            "predict",
            "input=x classes.lineer=[crack]",
            r"^classes\.lineer: unknown key \(did you mean classes\.linear\?\)$",
        ),
        ("predict", "input=x tiling.layout=spiral", r"^tiling\.layout must be fitted or grid, got 'spiral'$"),
        ("predict", "input=x tiling.margin=-1", r"^tiling\.margin: must be at least 0, got -1$"),
        ("predict", "input=x precison=bf16", r"^precison: unknown key \(did you mean precision\?\)$"),
        ("export", "opset=abc", r"^opset: expected an integer, got 'abc'$"),
        ("check_data", "dataset.rot=/data", r"^dataset\.rot: unknown key \(did you mean dataset\.root\?\)$"),
    ],
)
def test_mistakes_are_named_in_one_line(compose_config, stage, override, expected):
    overrides = override.split() + (["input=x"] if stage == "predict" and "input=" not in override else [])
    message = problem(compose_config, stage, overrides)
    assert re.search(expected, message), message
    assert "\n" not in message


def test_predict_without_input_says_how_to_give_one(compose_config):
    assert problem(compose_config, "predict", []).startswith("no input given: set input=PATH")


def test_every_problem_is_listed_at_once(compose_config):
    message = problem(
        compose_config,
        "finetune",
        ["optim.lr=0", "+dataset.image_sze=3", "seed=-1", "+transfer.freeze_dept=2"],
    )
    assert message.startswith("config: 4 problems, nothing was run")
    for key in ("optim.lr", "dataset.image_sze", "seed", "transfer.freeze_dept"):
        assert f"\n  {key}: " in message


def test_missing_dataset_root_is_named(compose_config):
    assert problem(compose_config, "finetune", ["dataset=folder_seg"]) == (
        "dataset.root: has no value; set it, e.g. dataset.root=..."
    )


def test_resume_and_another_checkpoint_conflict(compose_config):
    message = problem(compose_config, "finetune", ["resume=true", "ckpt_path=/some/where.ckpt"])
    assert message.startswith("resume, ckpt_path:")


@pytest.mark.parametrize(("stage", "run"), [("pretrain", run_pretrain), ("finetune", run_finetune)])
def test_entry_points_validate_before_any_work(compose_config, tmp_path, stage, run):
    cfg = compose_config(stage, ["optim.lr=-1", "dataset.synthetic.seed=123"])
    with pytest.raises(UserError, match=r"optim\.lr"):
        run(cfg)
    assert not (tmp_path / "outputs").exists(), "a run directory was made"
    assert not (tmp_path / "data").exists(), "the synthetic data set was generated"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["trainer.max_epoch=3"], "error: trainer.max_epoch: unknown key (did you mean trainer.max_epochs?)\n"),
        (["experiment=quik"], "error: experiment=quik: no such option (did you mean experiment=quick? "),
        (["optim.lr=-1"], "error: optim.lr: must be a positive number, got -1.0\n"),
    ],
)
def test_the_command_line_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys, argv, expected):
    """Through ``@entry_point`` as `python -m defectseg.finetune ...` runs it; nothing is written."""
    from defectseg.finetune import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["finetune", *argv, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and len(err.splitlines()) == 1, err
    assert "HYDRA_FULL_ERROR" not in __import__("os").environ
