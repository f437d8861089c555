"""The fault corpus: crafted pickles and broken files fed to every loader, a concurrent run into one run directory,
kills during training, and the other mistakes users make. Every case asserts that nothing already written is lost.

docs/robustness.md counts the cases: ``pytest --collect-only -q tests/test_faults.py`` lists one item per fault.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from defectseg.export import run_export
from defectseg.finetune import run_finetune
from defectseg.inference.runtime import load_segmenter
from defectseg.models.encoder_io import WEIGHTS_NAME, load_encoder, load_weights_file, save_encoder
from defectseg.predict import run_predict
from defectseg.training.checkpoints import AtomicCheckpointIO, load_checkpoint, resume_path
from defectseg.utils import run_directory
from defectseg.utils.errors import UnsafeFileError, UserError, user_error_in
from defectseg.utils.hydra_callbacks import GuardRunDirectory
from defectseg.utils.run_directory import OWNER_NAME, claim_run_directory, make_output_dir
from tests.faults import BROKEN, CRAFTED, snapshot
from tests.helpers import write_segmentation_set
from tests.test_robustness import EPOCHS, STEPS, fast_args, history_of, start, wait_for

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"_target_": "defectseg.models.unet_paper", "in_channels": 3, "channels": [4, 8, 16], "num_classes": 1}


# --- every loader, pointed at a bad file -------------------------------------------------------------------------
# A loader: where it reads (given a fresh folder, with whatever else belongs there written) and how it is called.


def _run_dir_with_config(folder: Path) -> Path:
    run_dir = folder / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": TINY_MODEL, "dataset": {"image_size": 32}}), run_dir / "config.yaml")
    (run_dir / "split.json").write_text('{"train": ["a.png"]}\n')
    return run_dir


def _checkpoint_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "some.ckpt"


def _last_ckpt(folder: Path) -> Path:
    return _run_dir_with_config(folder) / "checkpoints" / "last.ckpt"


def _best_ckpt(folder: Path) -> Path:
    return _run_dir_with_config(folder) / "checkpoints" / "best.ckpt"


def _settings(stage: str) -> DictConfig:
    """conf/<stage>.yaml's own keys (its defaults list, the schema and paths, is Hydra's to compose)."""
    settings = OmegaConf.load(REPO / "conf" / f"{stage}.yaml")
    settings.pop("defaults")
    return settings


def _export(path: Path) -> None:
    cfg = OmegaConf.merge(
        _settings("export"),
        {"checkpoint": str(path.parent.parent), "output_dir": str(path.parent.parent.parent / "exported")},
    )
    run_export(cfg)


LOADERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object]]] = {
    "checkpoint": (_checkpoint_file, load_checkpoint),
    "lightning_reload": (_checkpoint_file, lambda path: AtomicCheckpointIO().load_checkpoint(path, weights_only=False)),
    "resume": (_last_ckpt, lambda path: resume_path(OmegaConf.create({"resume": True}), path.parent.parent)),
    "encoder_weights_file": (_checkpoint_file, lambda path: load_weights_file(nn.Linear(2, 2), path)),
    "predict_model": (_best_ckpt, lambda path: load_segmenter(str(path.parent.parent), "cpu")),
    "export_model": (_best_ckpt, _export),
}


def assert_one_clear_line(error: BaseException, path: Path) -> str:
    """A user error (printed as one line by the entry points), naming the file, free of torch's coloured advice."""
    assert user_error_in(error) is not None, f"{type(error).__name__} would print a traceback"
    message = str(error)
    assert "\n" not in message and "\x1b" not in message, message
    assert "trust" not in message and "weights_only" not in message, message
    assert str(path) in message, message
    return message


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("crafted", sorted(CRAFTED))
def test_a_crafted_pickle_is_refused_by_every_loader_and_runs_nothing(loader, crafted, tmp_path):
    where, load = LOADERS[loader]
    marker = tmp_path / "marker"
    path = CRAFTED[crafted](where(tmp_path / "files"), marker)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeFileError) as caught:
        load(path)
    message = assert_one_clear_line(caught.value, path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: refused to load: this (checkpoint|weights file) holds Python objects that loading "
        r"would execute \(it would call [\w.]+\); only .* as defectseg writes them, are read",
        message,
    ), message
    assert not marker.exists(), "the payload ran"
    assert snapshot(tmp_path) == before, "a refused load changed or removed files"


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_file_is_named_in_one_line_by_every_loader(loader, broken, tmp_path):
    where, load = LOADERS[loader]
    path = BROKEN[broken](where(tmp_path / "files"))
    before = snapshot(tmp_path)
    with pytest.raises(Exception) as caught:
        load(path)
    assert not isinstance(caught.value, UnsafeFileError), "a broken file is not an attack"
    assert_one_clear_line(caught.value, path)
    assert snapshot(tmp_path) == before


ARCHITECTURE = {"model": "tiny-linear"}


def _encoder_pair(folder: Path, keep_sha: bool = False) -> Path:
    save_encoder(nn.Linear(2, 2), folder, ARCHITECTURE)
    if not keep_sha:  # without the checksum the weights reach the safetensors reader itself
        info = json.loads((folder / "encoder.json").read_text())
        del info["sha256"]
        (folder / "encoder.json").write_text(json.dumps(info))
    return folder / WEIGHTS_NAME


ENCODER_FAULTS: dict[str, Callable[[Path], Path]] = {
    "empty_weights": lambda folder: BROKEN["empty"](_encoder_pair(folder)),
    "truncated_weights": lambda folder: _cut(_encoder_pair(folder)),
    "random_weights": lambda folder: BROKEN["random_bytes"](_encoder_pair(folder)),
    "pickle_named_safetensors": lambda folder: CRAFTED["payload_in_state_dict"](
        _encoder_pair(folder), folder / "marker"
    ),
    "changed_byte_sha_mismatch": lambda folder: _flip_last_byte(_encoder_pair(folder, keep_sha=True)),
    "description_missing": lambda folder: _remove_description(_encoder_pair(folder)),
    "description_not_json": lambda folder: _garble_description(_encoder_pair(folder)),
    "other_architecture": lambda folder: _other_architecture(_encoder_pair(folder)),
}


def _cut(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-7])
    return path


def _flip_last_byte(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _remove_description(path: Path) -> Path:
    (path.parent / "encoder.json").unlink()
    return path


def _garble_description(path: Path) -> Path:
    (path.parent / "encoder.json").write_text("{not json")
    return path


def _other_architecture(path: Path) -> Path:
    info = json.loads((path.parent / "encoder.json").read_text())
    info["architecture"] = {"model": "another"}
    (path.parent / "encoder.json").write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("fault", sorted(ENCODER_FAULTS))
def test_a_broken_stage1_encoder_is_named_and_the_encoder_left_untouched(fault, tmp_path):
    path = ENCODER_FAULTS[fault](tmp_path / "stage1")
    encoder = nn.Linear(2, 2)
    weights_before = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    before = snapshot(tmp_path)
    with pytest.raises(Exception) as caught:
        load_encoder(encoder, tmp_path / "stage1", ARCHITECTURE)
    message = str(caught.value)
    assert user_error_in(caught.value) is not None and "\n" not in message
    assert str(path.parent) in message, message
    assert not (tmp_path / "stage1" / "marker").exists()
    assert all((encoder.state_dict()[name] == tensor).all() for name, tensor in weights_before.items())
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("entry_point", ["predict", "export"])
def test_the_command_line_shows_the_refusal_as_one_line(entry_point, tmp_path):
    """What the user sees: exit 2 and the one refusal line; torch's coloured advice never reaches the terminal."""
    marker = tmp_path / "marker"
    path = CRAFTED["os_system_in_checkpoint"](_best_ckpt(tmp_path), marker)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photo)
    args = [f"checkpoint={path.parent.parent}", f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}"]
    if entry_point == "predict":
        args.append(f"input={photo}")
    result = subprocess.run(
        [sys.executable, "-m", f"defectseg.{entry_point}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{path}: refused to load" in errors[0], result.stderr[-2000:]
    assert "\x1b" not in result.stderr and "Traceback" not in result.stderr and "trust" not in result.stderr
    assert not marker.exists()


# --- one run directory, one process --------------------------------------------------------------------------------


def test_a_second_finetune_into_a_live_run_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    """Two real finetunes (seed 1, seed 2) into one hydra.run.dir: the second is refused naming the first; the first's
    files, its .hydra/ record included, are its own."""
    data = write_segmentation_set(tmp_path / "seg", n_images=10)
    run_dir = tmp_path / "shared_run"
    go = tmp_path / "go"
    common = fast_args(data, tmp_path, [f"hydra.run.dir={run_dir}", "trainer.max_epochs=1"])
    hold = ["+callbacks.hold._target_=robustness_callbacks.WaitForFile", f"+callbacks.hold.path={go}"]
    first = start([*common, "seed=1", *hold, f"+callbacks.hold.waiting={tmp_path / 'waiting'}"], tmp_path / "first.log")
    wait_for((tmp_path / "waiting").is_file, first, tmp_path / "first.log")  # training, held after its first batch
    assert json.loads((run_dir / OWNER_NAME).read_text())["pid"] == first.pid
    held = snapshot(run_dir)
    log_so_far = held.pop("finetune.log", None) and (run_dir / "finetune.log").read_text()

    second = start([*common, "seed=2"], tmp_path / "second.log")
    assert second.wait(timeout=300) == 2
    refusal = (tmp_path / "second.log").read_text()
    errors = [line for line in refusal.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in refusal, refusal
    assert f"in use by pid {first.pid} on " in errors[0] and "started " in errors[0] and "seed=1" in errors[0]
    assert str(run_dir) in errors[0]
    after = snapshot(run_dir)
    after.pop("finetune.log", None)  # Hydra's log handler appends: the second run's lines follow the first's
    assert after == held, "the refused run changed files of the held directory"
    assert (run_dir / "finetune.log").read_text().startswith(log_so_far or "")

    go.touch()
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 1
    assert OmegaConf.load(run_dir / "config.yaml").seed == 1
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == 1, "Hydra's record was overwritten"
    assert not (run_dir / OWNER_NAME).exists(), "a finished run gives its directory back"


HOLD = (
    "import sys, time; from defectseg.utils.run_directory import claim_run_directory as c; c(sys.argv[1]); "
    "print('held', flush=True); time.sleep(600)"
)


def _holder(directory: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_killed_holder_leaves_no_stuck_lock_and_resume_into_a_free_directory_works(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        with pytest.raises(UserError, match=rf"in use by pid {holder.pid} on .*resume=true once it has stopped"):
            claim_run_directory(run_dir, resume=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (run_dir / OWNER_NAME).is_file(), "a SIGKILLed holder cannot tidy up"
    lock = claim_run_directory(run_dir, resume=True)  # the kernel dropped the dead holder's lock
    assert json.loads((run_dir / OWNER_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_jobs_of_one_multirun_sharing_a_directory_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(run_directory, "_in_multirun", lambda: True)
    monkeypatch.setattr(run_directory, "_used_by_sweep_jobs", set())
    first = claim_run_directory(tmp_path / "job")
    (tmp_path / "job" / "metrics.json").write_text("{}")
    first.release()
    with pytest.raises(UserError, match=r"an earlier job of this multirun already trained in this directory"):
        claim_run_directory(tmp_path / "job")
    claim_run_directory(tmp_path / "other_job").release()
    assert (tmp_path / "job" / "metrics.json").read_text() == "{}"


# --- kills during training -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stopped_and_killed_runs_resume_to_the_full_epoch_count(compose_config, tmp_path):
    """SIGTERM mid-epoch stops after saving last.ckpt; its resume is SIGKILLed (holding the run directory, mid-write
    temporaries left behind); a second resume is not refused, removes the temporaries and trains every epoch."""
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
    written = {name: (run_dir / name).read_bytes() for name in ("split.json",)}

    second = start([*throttled, "resume=true"], tmp_path / "second.log")
    wait_for(lambda: load_checkpoint(last)["global_step"] > stopped_at, second, tmp_path / "second.log")
    second.send_signal(signal.SIGKILL)
    assert second.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(last)["global_step"]
    assert stopped_at < killed_at < STEPS
    # what a SIGKILL in the middle of an atomic write leaves: the temporary beside its target
    stale = [run_dir / ".metrics.json.k1ll3d.tmp", last.parent / ".last.ckpt.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")

    metrics = run_finetune(compose_config("finetune", fast_args(data, tmp_path, ["resume=true"]), run_name="run"))
    assert metrics["epochs"] == EPOCHS
    assert not [path for path in stale if path.exists()], "stale temporaries survived the resume"
    assert not list(run_dir.rglob(".*.tmp"))
    assert {name: (run_dir / name).read_bytes() for name in written} == written, (
        "the first run's records changed"
    )  # config.yaml is rewritten: resume=true
    final = load_checkpoint(last)
    assert final["global_step"] == STEPS and final["epoch"] == EPOCHS - 1
    assert [row["epoch"] for row in history_of(final)] == list(range(EPOCHS)), "every epoch validated once"
    best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert best["epoch"] == metrics["best_epoch"]


# --- other mistakes -----------------------------------------------------------------------------------------------


def test_a_run_that_trains_no_step_fails_instead_of_reporting(compose_config, segmentation_set, tmp_path):
    cfg = compose_config("finetune", fast_args(segmentation_set, tmp_path, ["trainer.limit_train_batches=0"]))
    with pytest.raises(UserError, match=r"training took no step \(trainer\.limit_train_batches=0") as caught:
        run_finetune(cfg)
    assert "\n" not in str(caught.value)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists(), "an untrained network was reported"


def _photo(tmp_path: Path) -> Path:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photo)
    return photo


OUTPUT_DIRS: dict[str, Callable[[Path, Path, Callable], object]] = {
    "training_run_dir": lambda file, tmp, compose: run_finetune(
        OmegaConf.merge(
            compose("finetune", fast_args(write_segmentation_set(tmp / "seg"), tmp)),
            {"paths": {"output_dir": str(file)}},
        )
    ),
    "predict_output_dir": lambda file, tmp, compose: run_predict(
        OmegaConf.merge(
            _settings("predict"),
            {"input": str(_photo(tmp)), "checkpoint": str(_tiny_run(tmp)), "output_dir": str(file), "progress": False},
        )
    ),
    "export_output_dir": lambda file, tmp, compose: run_export(
        OmegaConf.merge(_settings("export"), {"checkpoint": str(_tiny_run(tmp)), "output_dir": str(file)})
    ),
    "below_a_file": lambda file, tmp, compose: make_output_dir(file / "sub", "output_dir"),
}


def _tiny_run(tmp_path: Path) -> Path:
    from tests.test_export import write_tiny_run

    return write_tiny_run(tmp_path / "tiny_run")


@pytest.mark.parametrize("where", sorted(OUTPUT_DIRS))
def test_an_output_dir_naming_a_file_is_one_line_and_the_file_is_kept(where, compose_config, tmp_path):
    file = tmp_path / "results.csv"
    file.write_text("keep me\n")
    with pytest.raises(UserError) as caught:
        OUTPUT_DIRS[where](file, tmp_path, compose_config)
    assert "\n" not in str(caught.value) and str(file) in str(caught.value) and "is a file" in str(caught.value)
    assert file.read_text() == "keep me\n"


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_hydra_directories_naming_a_file_are_one_line(key, tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("keep me\n")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(file)}, "sweep": {"dir": str(file)}}})
    start_hook = GuardRunDirectory().on_run_start if key == "hydra.run.dir" else GuardRunDirectory().on_multirun_start
    with pytest.raises(SystemExit) as caught:
        start_hook(config=config)
    assert caught.value.code == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith(f"error: {key}={file} is a file") and "\n" not in printed
    assert file.read_text() == "keep me\n"
