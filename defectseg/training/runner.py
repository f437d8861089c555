"""What both stages share around Lightning: the trainer from config, precision, device name, run files."""

from __future__ import annotations

import gc
import json
import logging
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from omegaconf import DictConfig, OmegaConf

from defectseg.training.callbacks import AveragedWeights, EpochHistory, GracefulStop, TrainingClock
from defectseg.training.checkpoints import AtomicCheckpointIO, check_same_config, resume_path
from defectseg.training.progress import EpochLines, OneBar
from defectseg.utils.errors import ConfigError, RunInterrupted, UserError
from defectseg.utils.io import atomic_write_text
from defectseg.utils.logs import interactive, quiet_third_party
from defectseg.utils.run_directory import claim_run_directory, is_first_process

log = logging.getLogger(__name__)
# A frozen encoder is in eval mode on purpose (its norm statistics stay fixed).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
quiet_third_party()


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: Any, accelerator: str = "auto") -> str | int:
    """``auto``: bf16 autocast where the hardware runs it natively (≈3x on bf16 CPUs), else fp16 on older GPUs, else
    fp32."""
    if str(precision) != "auto":
        return precision
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def device_name(accelerator: str = "auto") -> str:
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({torch.get_num_threads()} threads)"


def seed_run(seed: int) -> None:
    """Seed Python, NumPy, torch and dataloader workers; first thing a stage does, so model init is seeded."""
    L.seed_everything(int(seed), workers=True, verbose=False)


def calibrate_features(model: Any, datamodule: Any, batches: int) -> list[float | None]:
    """Fix the decoder's input scale from un-augmented training images (see FeatureStandardizer); per level, the share
    of silent channels.

    Both stages train a decoder on calibrated features: stage 2 always, stage 1 with pretrain_task=segmentation.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(datamodule.calibration_dataset(), batch_size=datamodule.batch_size, shuffle=False)
    images = (batch["image"].float() / 255.0 for batch, _ in zip(loader, range(batches)))
    return model.calibrate_feature_scale(images)


def refuse_ddp_launch_in_multirun(trainer: L.Trainer) -> None:
    """Lightning starts DDP's extra processes by re-running the command line: inside a Hydra
    multirun (-m) each would start the whole sweep again, so stop with a way out instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if (
        isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher)
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise UserError(
            "trainer=ddp cannot start its processes inside a Hydra multirun (-m): run each job on its own "
            "(python -m defectseg.finetune trainer=ddp ...), or sweep with hydra/launcher=slurm, where SLURM starts "
            "one process per device"
        )


def build_callbacks(cfg: DictConfig) -> dict[str, L.Callback]:
    """The trainer's callbacks from ``cfg.callbacks`` (conf/callbacks/), by name, in config order."""
    return {str(name): instantiate(node) for name, node in (cfg.get("callbacks") or {}).items() if node is not None}


def required_callback(callbacks: dict[str, L.Callback], name: str, kind: type) -> Any:
    found = callbacks.get(name)
    if not isinstance(found, kind):
        raise ConfigError(
            f"callbacks.{name}: a training run needs a {kind.__name__} here (conf/callbacks/required.yaml), "
            f"got {type(found).__name__ if found is not None else 'none'}"
        )
    return found


def weight_averaging(callbacks: dict[str, L.Callback]) -> str | None:
    """The label of the run's weight averaging (callbacks=ema), None without; Lightning's own averaging callbacks are
    refused: after fit they load a checkpoint's live weights back, so the test would score what was never
    validated."""
    labels = []
    for name, callback in callbacks.items():
        if isinstance(callback, AveragedWeights):
            labels.append(callback.label)
        elif isinstance(callback, WeightAveraging):
            raise ConfigError(
                f"callbacks.{name}: {type(callback).__name__} would test other weights than it validated; "
                "average the weights with callbacks=ema (defectseg.training.callbacks.AveragedWeights)"
            )
    if len(labels) > 1:
        raise ConfigError("callbacks: more than one weight averaging; keep one (callbacks=ema)")
    return labels[0] if labels else None


class Run:
    """One training run's trainer, its bookkeeping callbacks and the files it writes."""

    def __init__(self, cfg: DictConfig, monitor: str, mode: str, callbacks: list[L.Callback] | None = None) -> None:
        self.cfg = cfg
        self.output_dir = Path(cfg.paths.output_dir)
        # One process per run directory (DDP's other ranks share rank 0's): a second run is refused, naming the owner.
        resuming = bool(cfg.get("resume", False)) or str(cfg.get("ckpt_path")) == "last"
        self.lock = claim_run_directory(self.output_dir, resume=resuming) if is_first_process() else None
        try:
            self._start_run(cfg, monitor, mode, callbacks or [])
        except BaseException:
            self.release()
            raise

    def _start_run(self, cfg: DictConfig, monitor: str, mode: str, extra_callbacks: list[L.Callback]) -> None:
        self.resume_from = resume_path(cfg, self.output_dir)  # before anything is written into the run directory
        if self.resume_from is not None:
            check_same_config(self.output_dir / "config.yaml", cfg)
        self.start_time = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._start = time.perf_counter()
        torch.set_float32_matmul_precision("high")
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        self.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
        self.device = device_name(accelerator)
        self.monitor, self.mode = monitor, mode
        configured = build_callbacks(cfg)
        self.checkpoint: ModelCheckpoint = required_callback(configured, "best_checkpoint", ModelCheckpoint)
        self.last_checkpoint: ModelCheckpoint = required_callback(configured, "last_checkpoint", ModelCheckpoint)
        self.clock: TrainingClock = required_callback(configured, "clock", TrainingClock)
        self.history: EpochHistory = required_callback(configured, "history", EpochHistory)
        self.stop: GracefulStop = required_callback(configured, "graceful_stop", GracefulStop)
        self.weight_averaging = weight_averaging(configured)
        if (self.checkpoint.monitor, self.checkpoint.mode) != (monitor, mode):
            raise ConfigError(
                f"callbacks.best_checkpoint: this stage selects the best epoch by {monitor} ({mode}), "
                f"not {self.checkpoint.monitor} ({self.checkpoint.mode})"
            )
        callbacks = [*extra_callbacks, *configured.values()]
        show_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and interactive()
        if show_bar:
            # Refreshing the bar reads the logged loss back from the device (a sync on GPUs): as often as the logger.
            callbacks.append(OneBar(refresh_rate=int(cfg.trainer.get("log_every_n_steps") or 50)))
        elif cfg.trainer.get("enable_progress_bar", True):
            callbacks.append(EpochLines())  # a file or a pipe: plain lines instead of a bar
        self.logger = instantiate(cfg.logger) if cfg.get("logger") else False
        self.trainer: L.Trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            enable_progress_bar=show_bar,
            logger=self.logger,
            precision=self.precision,
            default_root_dir=str(self.output_dir),
            plugins=[AtomicCheckpointIO()],
        )
        refuse_ddp_launch_in_multirun(self.trainer)
        if self.trainer.is_global_zero:  # known from here on; under DDP only rank 0 writes run files
            atomic_write_text(self.output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    def fit(self, task: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """``trainer.fit``, resumed when asked; a SIGTERM / Ctrl-C stop becomes a one-line message saying how to
        resume."""
        ckpt_path = str(self.resume_from) if self.resume_from else None
        try:
            self.trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:
            self.release()
            if self.stop.signal_name is None:
                raise
            saved = f"saved {self.stop.saved}" if self.stop.saved else "nothing new saved"
            raise RunInterrupted(
                f"{self.stop.signal_name}: training stopped at epoch {self.trainer.current_epoch}, step "
                f"{self.trainer.global_step}, {saved}; "
                f"resume with: python -m defectseg.{self.cfg.get('stage', 'finetune')} resume=true "
                f"hydra.run.dir={self.output_dir} "
                "and the first run's overrides",
                self.stop.signal_number,
            ) from None
        except BaseException:
            self.release()
            raise
        if self.trainer.global_step == 0:
            self.release()
            trainer = self.cfg.trainer
            settings = ", ".join(
                f"trainer.{key}={trainer.get(key)}" for key in ("limit_train_batches", "max_epochs", "max_steps")
            )
            raise UserError(
                f"training took no step ({settings}): the network is untrained, so it is neither tested nor reported; "
                "let it train at least one batch"
            )

    def record_split(self, datamodule: Any) -> None:
        """Write ``split.json``; a resumed run must see the files the interrupted run trained on."""
        path = self.output_dir / "split.json"
        if self.resume_from is not None and path.is_file():
            before = json.loads(path.read_text())
            changed = [
                split
                for split in ("train", "val", "test")
                if before.get(split, []) != datamodule.split_files.get(split, [])
            ]
            if changed:
                raise UserError(
                    f"resume: the {'/'.join(changed)} files differ from the interrupted run's ({path}); the data set "
                    "changed since, so start a new run"
                )
        if self.trainer.is_global_zero:  # under DDP every rank runs the stage; one writes
            datamodule.write_split(path)

    @property
    def best_checkpoint(self) -> str | None:
        """'best' for Lightning when a checkpoint was written (not under fast_dev_run)."""
        return "best" if self.checkpoint.best_model_path else None

    def summary(self) -> dict[str, Any]:
        """The metrics.json fields every stage shares: epochs, time, throughput, machine, files."""
        return {
            "epochs": self.trainer.current_epoch,
            "train_seconds": round(self.clock.train_seconds, 3),
            "fit_seconds": round(self.clock.fit_seconds, 3),
            "train_images_per_second": round(self.clock.images_per_second, 3),
            "device": self.device,
            "precision": str(self.precision),
            "weight_averaging": self.weight_averaging,  # callbacks=ema: what validation, checkpoints and test scored
            "checkpoint": self.checkpoint.best_model_path or None,
            "output_dir": str(self.output_dir),
            "start_time": self.start_time,
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - self._start, 3),
        }

    def log_text(self, tag: str, text: str) -> None:
        if self.logger and hasattr(self.logger, "experiment") and self.trainer.is_global_zero:
            self.logger.experiment.add_text(tag, text)

    def release(self) -> None:
        """Give the run directory back (the kernel does it too when the process ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        """Release what a sweep's next job must not inherit (loggers, cached data, GPU memory, the run directory)."""
        if self.logger and hasattr(self.logger, "finalize"):
            self.logger.finalize("success")
        self.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def log_hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """One HParams entry per run, with its final metrics, so TensorBoard's HParams view lists every sweep job.

        Only the session records are written, not the experiment record Lightning adds: TensorBoard takes the columns
        from the *first* run holding an experiment record, so under ``--logdir outputs`` a stage-1 run hid stage 2's
        mode, label budget and Dice. Without one, TensorBoard builds the columns from all runs together.
        """
        if not (self.logger and hasattr(self.logger, "experiment") and self.trainer.is_global_zero):
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        scores = {f"hparams/{k}": float(v) for k, v in metrics.items() if v is not None}
        writer = self.logger.experiment
        for name, value in scores.items():
            writer.add_scalar(name, value, 0)
        _, session_start, session_end = hparams(clean, scores)
        writer._get_file_writer().add_summary(session_start)
        writer._get_file_writer().add_summary(session_end)
        writer.flush()
