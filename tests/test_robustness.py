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
from tests.conftest import write_segmentation_set

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


@pytest.mark.slow
def test_stopped_and_killed_runs_resume_to_the_full_epoch_count(compose_config, tmp_path):
    """SIGTERM mid-epoch stops after saving last.ckpt; its resume is SIGKILLed; a second resume still trains EPOCHS epochs."""
    data = write_segmentation_set(tmp_path / "seg", n_images=10)
    run_dir = tmp_path / "outputs" / "finetune" / "run"  # where compose_config(run_name="run") puts the last resume
    last = run_dir / "checkpoints" / "last.ckpt"
    throttled = fast_args(
        data,
        tmp_path,
        [
            f"hydra.run.dir={run_dir}",
            "+callbacks.throttle._target_=robustness_callbacks.Throttle",
            "+callbacks.throttle.seconds=0.25",
        ],
    )

    first = start(throttled, tmp_path / "first.log")
    wait_for(last.is_file, first, tmp_path / "first.log")  # epoch 0 done
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    message = (tmp_path / "first.log").read_text()
    assert "stopped: SIGTERM" in message and "resume=true" in message and str(run_dir) in message
    stopped_at = load_checkpoint(last)["global_step"]
    assert 3 <= stopped_at < STEPS
    assert not (run_dir / "metrics.json").exists()

    second = start([*throttled, "resume=true"], tmp_path / "second.log")
    wait_for(
        lambda: load_checkpoint(last)["global_step"] > stopped_at, second, tmp_path / "second.log"
    )  # atomic: never half a file
    second.send_signal(signal.SIGKILL)
    assert second.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(last)["global_step"]
    assert stopped_at < killed_at < STEPS
    assert not list(last.parent.glob(".*.tmp")), "a killed save left a temp file behind"

    metrics = run_finetune(compose_config("finetune", fast_args(data, tmp_path, ["resume=true"]), run_name="run"))
    assert metrics["epochs"] == EPOCHS
    final = load_checkpoint(last)
    assert final["global_step"] == STEPS and final["epoch"] == EPOCHS - 1
    epochs = history_of(final)
    assert [row["epoch"] for row in epochs] == list(range(EPOCHS)), "every epoch validated once, across three processes"
    best_row = max(epochs, key=lambda row: row["val/dice"])
    assert (
        metrics["best_val_dice"] == pytest.approx(best_row["val/dice"]) and metrics["best_epoch"] == best_row["epoch"]
    )
    best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert best["epoch"] == metrics["best_epoch"]
    saved_best = next(state for key, state in final["callbacks"].items() if key.startswith("ModelCheckpoint"))
    assert float(saved_best["best_model_score"]) == pytest.approx(metrics["best_val_dice"])


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
