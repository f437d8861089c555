"""Transfer recipes: what trains in each phase, at which rate, across a resume, and in a multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defectseg.finetune import run_finetune
from defectseg.models import smp_model, unet_paper
from defectseg.models.encoder_io import save_encoder
from defectseg.models.freeze import TransferRecipe, encoder_levels, freeze_levels, parameter_groups
from tests.helpers import CONF_DIR, TINY_TRAINER
from tests.transfer_probe import PhaseProbe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (Path(CONF_DIR) / "transfer").glob("*.yaml"))


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(PhaseProbe, "records", [])
    monkeypatch.setattr(PhaseProbe, "optimizer_at_start", [])
    monkeypatch.setattr(PhaseProbe, "stop_after_epoch", None)
    return PhaseProbe


@pytest.fixture
def stage1_encoder(tmp_path: Path) -> Path:
    """A stage-1 encoder file as make pretrain writes it (random weights are enough to test what trains)."""
    torch.manual_seed(3)
    model = unet_paper()
    save_encoder(model.encoder, tmp_path / "stage1", model.architecture, extra={"pretrain": {"dataset": "test"}})
    return tmp_path / "stage1"


def overrides(root: Path, encoder: Path, recipe: str, epochs: int, *extra: str) -> list[str]:
    tiny = [o for o in TINY_TRAINER if not o.startswith("trainer.max_epochs")]
    return [
        *tiny,
        f"trainer.max_epochs={epochs}",
        f"transfer={recipe}",
        "dataset=folder_seg",
        f"dataset.root={root}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
        f"pretrained_encoder={encoder}",
        "+callbacks.probe._target_=tests.transfer_probe.PhaseProbe",
        *extra,
    ]


# --- the schedule, as arithmetic ------------------------------------------------------------


def test_staged_switches_once_at_its_share_of_the_epochs():
    recipe = TransferRecipe(name="staged", freeze="encoder", unfreeze_at=0.25)
    assert [recipe.frozen_levels_at(epoch, 16, 5) for epoch in range(16)] == [5] * 4 + [0] * 12
    assert recipe.schedule(16, 5) == [(0, 5), (4, 0)]


def test_gradual_unfreezes_the_deepest_level_first_then_one_more_per_step():
    recipe = TransferRecipe(name="gradual", freeze="encoder", unfreeze_at=0.1, unfreeze_every=0.1)
    assert recipe.schedule(20, 5) == [(0, 5), (2, 4), (4, 3), (6, 2), (8, 1), (10, 0)]


def test_discriminative_rates_fall_towards_the_input():
    recipe = TransferRecipe(name="d", freeze="none", encoder_lr_scale=0.5, level_lr_decay=0.5)
    groups = {g["name"]: g["lr"] for g in parameter_groups(unet_paper(), recipe, 1e-3)}
    assert groups["decoder"] == pytest.approx(1e-3)
    assert [groups[f"encoder_level_{i}"] for i in range(1, 6)] == pytest.approx(
        [1e-3 * 0.5 * 0.5**k for k in (4, 3, 2, 1, 0)]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze": "none", "unfreeze_at": 0.5}, r"transfer\.unfreeze_at unfreezes frozen levels"),
        ({"freeze": "encoder", "unfreeze_at": 1.5}, r"transfer\.unfreeze_at is a share"),
        ({"freeze": "encoder", "unfreeze_every": 0.1}, r"transfer\.unfreeze_every .* needs transfer\.unfreeze_at"),
        ({"freeze": "none", "encoder_lr_scale": 0.0}, r"transfer\.encoder_lr_scale must be positive"),
    ],
)
def test_impossible_recipes_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransferRecipe(name="x", **kwargs)


def test_unfrozen_batchnorm_returns_to_train_mode_and_frozen_one_stays_in_eval():
    model = smp_model("unet", "resnet18")
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    freeze_levels(model, len(encoder_levels(model.encoder)))
    model.train()
    assert not any(m.training for m in norms)
    freeze_levels(model, 0)
    assert all(m.training for m in norms)
    model.eval()
    freeze_levels(model, 0)
    assert not any(m.training for m in norms), "unfreezing keeps the model's own eval mode"


# --- each recipe in a real fit ----------------------------------------------------------------


EXPECTED = {  # (epoch -> levels that train) over 4 epochs, with the shipped shares
    "scratch": [[True] * 5] * 4,
    "full_finetune": [[True] * 5] * 4,
    "discriminative": [[True] * 5] * 4,
    "frozen_encoder": [[False] * 5] * 4,
    "partial_frozen": [[False] * 3 + [True] * 2] * 4,
    "staged": [[False] * 5] + [[True] * 5] * 3,
}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_each_recipe_trains_what_it_should_in_each_phase(
    recipe, probe, compose_config, segmentation_set, stage1_encoder
):
    metrics = run_finetune(compose_config("finetune", overrides(segmentation_set, stage1_encoder, recipe, 4)))
    assert [r["trains"] for r in probe.records] == EXPECTED[recipe]
    assert [r["train_mode"] for r in probe.records] == EXPECTED[recipe], "frozen levels in eval mode, the rest training"
    for record in probe.records:
        for level, trains in enumerate(record["trains"], start=1):
            rate = record["lr"].get(f"encoder_level_{level}")
            if trains:
                assert rate and rate > 0
            else:
                assert not rate, "a frozen level has rate 0 or no group"
        assert record["lr"]["decoder"] == pytest.approx(1e-4)
    assert metrics["transfer"] == recipe
    assert metrics["transfer_recipe"]["name"] == recipe
    assert metrics["transfer_schedule"][0]["epoch"] == 0
    if recipe == "frozen_encoder":
        assert probe.records[0]["encoder_in_optimizer"] == 0, "a never-unfrozen encoder holds no optimiser state"
    if recipe == "discriminative":
        rates = [probe.records[0]["lr"][f"encoder_level_{i}"] for i in range(1, 6)]
        assert rates == sorted(rates) and rates[-1] == pytest.approx(0.3e-4)


def test_gradual_unfreezes_deepest_first_in_a_fit(probe, compose_config, segmentation_set, stage1_encoder):
    cfg = compose_config(
        "finetune",
        overrides(
            segmentation_set, stage1_encoder, "gradual", 4, "transfer.unfreeze_at=0.25", "transfer.unfreeze_every=0.25"
        ),
    )
    metrics = run_finetune(cfg)
    assert [r["trains"] for r in probe.records] == [
        [False] * 5,
        [False] * 4 + [True],
        [False] * 3 + [True] * 2,
        [False] * 2 + [True] * 3,
    ]
    assert [c["frozen_levels"] for c in metrics["transfer_schedule"]] == [5, 4, 3, 2]


def test_warmup_ramps_each_group_from_when_it_starts_training(probe, compose_config, segmentation_set, stage1_encoder):
    """Warm-up over half the steps: the decoder ramps from step 0, the encoder (unfrozen at epoch 2) from its first."""
    cfg = compose_config(
        "finetune",
        overrides(segmentation_set, stage1_encoder, "staged", 4, "transfer.unfreeze_at=0.5", "transfer.warmup=0.5"),
    )
    run_finetune(cfg)
    ramp = max(1, round(0.5 * probe.records[0]["total_steps"]))
    encoder_start = probe.records[2]["step"]
    for record in probe.records:
        assert record["lr"]["decoder"] == pytest.approx(1e-4 * min(1.0, (record["step"] + 1) / ramp))
        expected = 0.0 if record["epoch"] < 2 else 1e-4 * min(1.0, (record["step"] - encoder_start + 1) / ramp)
        assert record["lr"]["encoder_level_1"] == pytest.approx(expected)
    assert probe.records[0]["lr"]["decoder"] < 1e-4 and probe.records[2]["lr"]["encoder_level_1"] < 1e-4


def test_resume_after_the_switch_trains_the_same_set_with_the_saved_optimizer_state(
    probe, compose_config, segmentation_set, stage1_encoder
):
    """Killed after epoch 2 (the switch was at epoch 1), resumed: epoch 3 trains what an uninterrupted run trains."""
    reference = overrides(segmentation_set, stage1_encoder, "staged", 4, "transfer.unfreeze_at=0.25")
    run_finetune(compose_config("finetune", reference, run_name="uninterrupted"))
    uninterrupted = {r["epoch"]: r for r in probe.records}

    probe.records.clear()
    probe.stop_after_epoch = 2
    first = run_finetune(compose_config("finetune", reference, run_name="killed"))
    assert [r["epoch"] for r in probe.records] == [0, 1, 2]
    saved = torch.load(Path(first["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    saved_state = saved["optimizer_states"][0]["state"]
    assert saved_state, "the encoder had optimiser state at the stop"

    probe.records.clear()
    probe.optimizer_at_start.clear()
    probe.stop_after_epoch = None
    resumed = run_finetune(compose_config("finetune", [*reference, "resume=true"], run_name="killed"))
    assert [r["epoch"] for r in probe.records] == [3]
    assert probe.records[0]["trains"] == uninterrupted[3]["trains"] == [True] * 5
    assert probe.records[0]["lr"] == pytest.approx(uninterrupted[3]["lr"])
    restored = probe.optimizer_at_start[0]["state"]
    assert restored.keys() == saved_state.keys()
    for index, state in saved_state.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(restored[index][key]), torch.as_tensor(value)), (index, key)
    assert [c["frozen_levels"] for c in resumed["transfer_schedule"]] == [5, 0]


def test_recipes_compose_in_a_multirun_and_are_recorded(segmentation_set, stage1_encoder, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY_TRAINER if not o.startswith("trainer.max_epochs")]
    command = [
        sys.executable,
        "-m",
        "defectseg.finetune",
        "-m",
        "transfer=staged,gradual,frozen_encoder",
        "trainer.max_epochs=2",
        "dataset=folder_seg",
        f"dataset.root={segmentation_set}",
        "dataset.image_size=32",
        "dataset.batch_size=4",
        f"pretrained_encoder={stage1_encoder}",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        *tiny,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    recorded = {json.loads((job / "metrics.json").read_text())["transfer"]: job.name for job in jobs}
    assert sorted(recorded) == ["frozen_encoder", "gradual", "staged"]
    assert "transfer-staged" in recorded["staged"], "job folders are named by the recipe"


def test_ema_validates_checkpoints_and_tests_the_averaged_weights(
    monkeypatch, compose_config, segmentation_set, stage1_encoder
):
    """callbacks=ema: best.ckpt holds the average (the live weights ride beside it), and the test scores the average,
    not the live weights Lightning's own callback would load back after fit."""
    from defectseg.models.freeze import FreezePolicy

    captured = {}
    original_apply = FreezePolicy.apply

    def spy_apply(self, model):
        captured["model"] = model
        return original_apply(self, model)

    monkeypatch.setattr(FreezePolicy, "apply", spy_apply)
    cfg = compose_config(
        "finetune",
        [
            *overrides(segmentation_set, stage1_encoder, "full_finetune", 3, "callbacks=ema"),
            "optim.lr=1e-3",
            "trainer.check_val_every_n_epoch=3",  # one validation, after three averaged steps: best.ckpt is epoch 3
        ],
    )
    metrics = run_finetune(cfg)
    assert metrics["weight_averaging"] == "ema 0.99"
    best = torch.load(Path(metrics["output_dir"]) / "checkpoints" / "best.ckpt", weights_only=True)
    averaged, live = best["state_dict"], best["current_model_state"]
    tested = {f"model.{k}": v for k, v in captured["model"].state_dict().items()}
    name = next(k for k in averaged if k.endswith("weight") and "encoder" in k)
    assert not torch.equal(averaged[name], live[name]), "the average is its own weights"
    assert torch.equal(tested[name].cpu(), averaged[name].cpu()), "the test scored the averaged weights"


def test_lightnings_own_weight_averaging_is_refused_naming_the_key(compose_config, segmentation_set, stage1_encoder):
    from defectseg.utils.errors import ConfigError

    extra = "+callbacks.average._target_=lightning.pytorch.callbacks.EMAWeightAveraging"
    cfg = compose_config("finetune", overrides(segmentation_set, stage1_encoder, "full_finetune", 1, extra))
    with pytest.raises(ConfigError, match=r"^callbacks\.average: EMAWeightAveraging .*callbacks=ema"):
        run_finetune(cfg)
