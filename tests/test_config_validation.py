"""Config errors fail before any work, with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectseg.config_validation import validate_config
from defectseg.finetune import run_finetune
from defectseg.pretrain import run_pretrain
from defectseg.utils.errors import UserError
from tests.helpers import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def problems(compose_config, stage: str, overrides: list[str]) -> str:
    with pytest.raises(UserError) as caught:
        validate_config(compose_config(stage, overrides), stage)
    return str(caught.value)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_shipped_configs_are_valid(compose_config, stage, experiment):
    validate_config(compose_config(stage, [f"experiment={experiment}"] if experiment else []), stage)


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
        ("finetune", "+optim.learning_rate=0.1", r"optim\.learning_rate: unknown key \(known here: lr, weight_decay\)"),
        ("finetune", "+lr=0.1", r"lr: unknown key \(did you mean optim\.lr\?\)"),
        (
            "finetune",
            "+dataset.image_sze=64",
            r"dataset\.image_sze: unknown key \(did you mean dataset\.image_size\?\)",
        ),
        ("finetune", "+trainer.max_epoch=3", r"trainer\.max_epoch: unknown key \(did you mean trainer\.max_epochs\?\)"),
        (
            "finetune",
            "+transfer.freeze_dept=2",
            r"transfer\.freeze_dept: unknown key \(did you mean transfer\.freeze_depth\?\)",
        ),
        ("pretrain", "+task.threshold=0.5", r"task: unknown key"),
        ("finetune", "seed=abc", r"seed: expected an integer, got 'abc'"),
        ("finetune", "trainer.max_epochs=2.5", r"trainer\.max_epochs: expected an integer or null, got 2\.5"),
        (
            "finetune",
            "optim.lr='1e-4'",
            r"optim\.lr: expected a number, got '1e-4' \(a string\); YAML reads 1e-4 as a string, write 1\.0e-4",
        ),
        ("finetune", "dataset.batch_size=[4]", r"dataset\.batch_size: expected an integer, got \[4\]"),
        ("finetune", "optim.lr=-0.001", r"optim\.lr: must be a positive number, got -0\.001"),
        ("finetune", "optim.weight_decay=-1", r"optim\.weight_decay: must be at least 0"),
        ("finetune", "task.threshold=1.0", r"task\.threshold: must lie strictly between 0 and 1"),
        (
            "finetune",
            "dataset.split_fractions=[0.7,0.2,0.2]",
            r"dataset\.split_fractions=\[0\.7, 0\.2, 0\.2\] must be non-negative and sum to 1",
        ),
        ("pretrain", "dataset.image_size=100", r"dataset\.image_size: 100 is not divisible by 16.*use 96 or 112"),
        ("finetune", "transfer.freeze=frozen", r"transfer\.freeze='frozen' is not one of"),
        ("finetune", "transfer.unfreeze_at=2.0", r"transfer\.unfreeze_at: is a share of the run between 0 and 1"),
        (
            "finetune",
            "transfer.unfreeze_at=0.5",
            r"transfer\.unfreeze_at unfreezes frozen levels, but transfer\.freeze=none",
        ),
        ("pretrain", "head.pooling=mean", r"head\.pooling must be avg, max or avgmax"),
        ("pretrain", "trainer.precision=17", r"trainer\.precision: expected one of"),
        (
            "finetune",
            "+callbacks.extra._target_=no_such_module.Callback",
            r"callbacks\.extra\._target_: cannot import 'no_such_module\.Callback'",
        ),
    ],
)
def test_bad_values_are_named(compose_config, stage, override, expected):
    assert __import__("re").search(expected, problems(compose_config, stage, [override]))


def test_every_problem_is_listed_at_once(compose_config):
    message = problems(
        compose_config,
        "finetune",
        ["optim.lr=0", "+dataset.image_sze=3", "seed=-1", "transfer=partial_frozen", "transfer.freeze_depth=9"],
    )
    assert message.startswith("config: 4 problem(s), nothing was run")
    for key in ("optim.lr", "dataset.image_sze", "seed", "transfer.freeze_depth: 9 exceeds the encoder's 5 levels"):
        assert key in message


def test_missing_dataset_root_is_named(compose_config):
    assert "dataset.root: has no value" in problems(compose_config, "finetune", ["dataset=folder_seg"])


def test_resume_and_another_checkpoint_conflict(compose_config):
    assert "resume, ckpt_path" in problems(compose_config, "finetune", ["resume=true", "ckpt_path=/some/where.ckpt"])


@pytest.mark.parametrize(("stage", "run"), [("pretrain", run_pretrain), ("finetune", run_finetune)])
def test_entry_points_validate_before_any_work(compose_config, tmp_path, stage, run):
    cfg = compose_config(stage, ["optim.lr=-1", "dataset.synthetic.seed=123"])
    with pytest.raises(UserError, match=r"optim\.lr"):
        run(cfg)
    assert not (tmp_path / "outputs").exists(), "a run directory was made"
    assert not (tmp_path / "data").exists(), "the synthetic data set was generated"
