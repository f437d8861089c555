"""Nothing lost, nothing unsafe: resume after SIGKILL / SIGTERM, atomic checkpoints, safe loading, non-finite loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from defectseg.finetune import run_finetune
from defectseg.training.callbacks import EpochHistory, NonFiniteLossError
from defectseg.training.checkpoints import AtomicCheckpointIO, load_checkpoint
from defectseg.utils.errors import RunInterrupted, UserError

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
# 10 images -> 6 train / 2 val / 2 test; batches of 2: 3 steps per epoch. A tiny U-Net keeps checkpoints small.
FAST = [
    "freeze=scratch",
    "dataset=folder_seg",
    "dataset.image_size=32",
    "dataset.batch_size=2",
    "model.channels=[4,8,16,32,64]",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks=none",
]
STEPS = EPOCHS * 3


def fast_args(root: Path, tmp_path: Path, extra: list[str] | None = None) -> list[str]:
    return [*FAST, f"dataset.root={root}", f"paths.root_dir={tmp_path}", *list(extra or [])]


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HYDRA_FULL_ERROR": "0"}
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "defectseg.finetune", *args],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(
                f"training ended (rc {process.returncode}) before the test could signal it:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for the run:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def history_of(checkpoint: dict) -> list[dict]:
    return next(state for key, state in checkpoint["callbacks"].items() if EpochHistory.__qualname__ in key)["epochs"]


def test_resume_without_a_checkpoint_says_where_it_looked(compose_config, segmentation_set, tmp_path):
    with pytest.raises(UserError, match=r"resume: there is no .*last\.ckpt.*hydra\.run\.dir="):
        run_finetune(compose_config("finetune", fast_args(segmentation_set, tmp_path, ["resume=true"])))


def test_resume_needs_the_same_config_and_a_finished_run_trains_no_more(compose_config, segmentation_set, tmp_path):
    first = run_finetune(compose_config("finetune", fast_args(segmentation_set, tmp_path, ["trainer.max_epochs=1"])))
    with pytest.raises(UserError, match=r"trainer\.max_epochs: 1 -> 3"):
        run_finetune(
            compose_config("finetune", fast_args(segmentation_set, tmp_path, ["trainer.max_epochs=3", "resume=true"]))
        )
    again = run_finetune(
        compose_config("finetune", fast_args(segmentation_set, tmp_path, ["trainer.max_epochs=1", "ckpt_path=last"]))
    )
    assert again["epochs"] == first["epochs"] == 1
    assert again["best_val_dice"] == first["best_val_dice"] and again["test_dice"] == first["test_dice"]


class _WritesAFile:
    """A pickle payload: unpickling it opens (creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(compose_config, segmentation_set, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "loops": {}, "payload": _WritesAFile(marker)}, evil)
    proof = tmp_path / "proof.ckpt"
    torch.save({"payload": _WritesAFile(tmp_path / "proof")}, proof)
    torch.load(proof, weights_only=False)
    assert (tmp_path / "proof").exists(), "the payload does run when unpickled unsafely"

    with pytest.raises(UserError, match=rf"{evil}: refused to load.*open") as caught:
        run_finetune(compose_config("finetune", fast_args(segmentation_set, tmp_path, [f"ckpt_path={evil}"])))
    assert "Python objects" in str(caught.value)
    with pytest.raises(UserError, match="refused to load"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)  # Lightning's own loads go through here
    assert not marker.exists()


def test_a_truncated_or_foreign_checkpoint_is_named(compose_config, segmentation_set, tmp_path):
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0, "global_step": 0, "loops": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(UserError, match=rf"{truncated}: not a readable checkpoint"):
        run_finetune(compose_config("finetune", fast_args(segmentation_set, tmp_path, [f"ckpt_path={truncated}"])))
    weights_only = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, weights_only)
    with pytest.raises(UserError, match=rf"{weights_only}: not a training checkpoint"):
        run_finetune(compose_config("finetune", fast_args(segmentation_set, tmp_path, [f"ckpt_path={weights_only}"])))


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    with pytest.raises(Exception):
        io.save_checkpoint(
            {"state_dict": {"w": torch.zeros(10_000)}, "broken": lambda: None}, path
        )  # pickling fails midway
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temp file left behind"


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(compose_config, segmentation_set, tmp_path):
    args = fast_args(
        segmentation_set,
        tmp_path,
        ["trainer.max_epochs=4", "+callbacks.nan._target_=robustness_callbacks.InjectNaN", "+callbacks.nan.at_epoch=2"],
    )
    cfg = compose_config("finetune", args)
    with pytest.raises(
        NonFiniteLossError, match=r"NaN or infinite at epoch 2, batch 0 \(optimizer step 7\).*last\.ckpt"
    ) as caught:
        run_finetune(cfg)
    assert "optim.lr" in str(caught.value)
    run_dir = Path(cfg.paths.output_dir)
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # epoch 1, not the best epoch: Lightning 2.6's save_last alone would only refresh last.ckpt with a new best
    assert last["epoch"] == 1 and last["global_step"] == 6, "the checkpoint of the last good epoch was kept"
    assert all(torch.isfinite(tensor).all() for tensor in last["state_dict"].values())
    assert not (run_dir / "metrics.json").exists()


def test_ctrl_c_stops_after_the_batch_saves_last_ckpt_and_restores_the_handler(
    compose_config, segmentation_set, tmp_path
):
    handler_before = signal.getsignal(signal.SIGINT)
    args = fast_args(
        segmentation_set,
        tmp_path,
        ["+callbacks.ctrl_c._target_=robustness_callbacks.SendSignal", "+callbacks.ctrl_c.at_step=4"],
    )
    cfg = compose_config("finetune", args)
    with pytest.raises(
        RunInterrupted,
        match=r"SIGINT: training stopped at epoch 1, step 4, saved .*last\.ckpt; resume with: .*resume=true",
    ) as caught:
        run_finetune(cfg)
    assert caught.value.exit_code == 130
    assert load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")["global_step"] == 4, (
        "saved at the stop, mid-epoch"
    )
    assert signal.getsignal(signal.SIGINT) is handler_before
