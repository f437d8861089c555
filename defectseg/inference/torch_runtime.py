"""A fine-tuned checkpoint as an inference model, in PyTorch.

The network is rebuilt from the run's own saved config (``config.yaml``, else
``.hydra/config.yaml``) with ``hydra.utils.instantiate``, so any model config works, and
its weights are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from defectseg.inference.runtime import DEFAULT_THRESHOLD, TUNED_THRESHOLD_KEY, ModelInfo
from defectseg.inference.scale import training_input_scale
from defectseg.utils.errors import UserError
from defectseg.utils.safe_load import torch_load_safely

log = logging.getLogger(__name__)


class ProbabilityModel(nn.Module):
    """Images in [0, 1] -> defect probabilities: what predict runs and what export writes.

    A sigmoid per channel (binary and multilabel models), or with ``softmax`` one over the channels (background +
    one per class: a softmax model's classes are exclusive).
    """

    def __init__(self, model: nn.Module, softmax: bool = False) -> None:
        super().__init__()
        self.model = model
        self.softmax = softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return logits.softmax(dim=1) if self.softmax else torch.sigmoid(logits)

    @classmethod
    def for_model(cls, model: nn.Module, info: ModelInfo) -> ProbabilityModel:
        return cls(model, softmax=info.classes is not None and not info.multilabel)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device}, but PyTorch sees no CUDA GPU here: use device=auto or device=cpu")
    return torch.device(device)


def size_multiple(model: nn.Module) -> int:
    """What the network's input sides must be divisible by (the encoder's total downsampling)."""
    encoder = getattr(model, "encoder", None)
    for name in ("reduction", "output_stride"):
        value = getattr(encoder, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 32


def run_config(checkpoint: Path) -> DictConfig:
    """The config of the run that wrote ``checkpoint`` (``RUN/checkpoints/best.ckpt``)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    for candidate in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if candidate.is_file():
            cfg = OmegaConf.load(candidate)
            if OmegaConf.select(cfg, "model._target_") is None:
                raise UserError(
                    f"{candidate}: has no model config (model._target_), "
                    f"so the network of {checkpoint} cannot be rebuilt"
                )
            return cfg
    raise UserError(
        f"{checkpoint}: cannot rebuild its network: no config.yaml or .hydra/config.yaml in its run directory "
        f"{run_dir} (keep checkpoints inside the run directory stage 2 wrote)"
    )


def recorded_input_scale(checkpoint: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """How the run's training photos were resized: its metrics.json, else measured from its split.json's photos."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((run_dir / "metrics.json").read_text()).get("input_scale")
        if recorded:
            return recorded
    image_size = OmegaConf.select(cfg, "dataset.image_size")
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        if image_size:  # a run from before input_scale was recorded, or one still training
            return training_input_scale(json.loads((run_dir / "split.json").read_text())["train"], int(image_size))
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = torch_load_safely(path, "checkpoint")  # the one refusal wording for unsafe or unreadable files
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def checkpoint_threshold(checkpoint: dict[str, Any]) -> tuple[float, str]:
    """The threshold stage 2 tuned on validation Dice, else the training config's, else 0.5."""
    tuned = checkpoint.get(TUNED_THRESHOLD_KEY) or {}
    if tuned.get("best_threshold") is not None:
        return float(
            tuned["best_threshold"]
        ), f"tuned on validation Dice (val Dice {tuned.get('val_dice_at_best_threshold')})"
    trained = (checkpoint.get("hyper_parameters") or {}).get("threshold")
    if trained is not None:
        return float(trained), "training config (task.threshold)"
    return DEFAULT_THRESHOLD, "default"


def checkpoint_classes(checkpoint: dict[str, Any], threshold: float) -> dict[str, Any]:
    """A model trained with dataset.classes: its class names, multilabel, and per-class thresholds (multilabel: the
    ones stage 2 tuned per class, else the training threshold for each); {} for a binary model."""
    hyper = checkpoint.get("hyper_parameters") or {}
    classes = hyper.get("classes")
    if not classes:
        return {}
    multilabel = bool(hyper.get("multilabel", False))
    thresholds = None
    if multilabel:
        tuned = (checkpoint.get(TUNED_THRESHOLD_KEY) or {}).get("best_threshold_per_class")
        if tuned and len(tuned) == len(classes):
            thresholds = [float(t) for t in tuned]
        else:
            thresholds = [float(hyper.get("threshold", threshold))] * len(classes)
    return {"classes": [str(c) for c in classes], "multilabel": multilabel, "class_thresholds": thresholds}


def load_model(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The fine-tuned network (eval mode, on the CPU) and what predict needs to know about it."""
    path = Path(path)
    cfg = run_config(path)
    checkpoint = read_checkpoint(path)
    threshold, source = checkpoint_threshold(checkpoint)
    classes = checkpoint_classes(checkpoint, threshold)
    if classes:  # stage 2 gave the model its channels from dataset.classes (finetune.build_model), as here
        channels = len(classes["classes"]) + (0 if classes["multilabel"] else 1)
        model = instantiate(cfg.model, num_classes=channels)
    else:
        model = instantiate(cfg.model)
    prefix = "model."
    state = {key[len(prefix) :]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"{path}: its weights do not fit the model in its run's config ({str(error).splitlines()[0]})"
        ) from error
    model.eval()
    if classes.get("multilabel") and (checkpoint.get(TUNED_THRESHOLD_KEY) or {}).get("best_threshold_per_class"):
        source = "tuned per class on validation Dice"
    tile_size = OmegaConf.select(cfg, "dataset.image_size")
    info = ModelInfo(
        source=str(path.resolve()),
        runtime="torch",
        threshold=threshold,
        threshold_source=source,
        tile_size=int(tile_size) if tile_size else None,
        multiple=size_multiple(model),
        architecture=dict(getattr(model, "architecture", {}) or {}),
        input_scale=recorded_input_scale(path, cfg),
        **classes,
    )
    return model, info


PRECISIONS = ("32", "bf16")


class TorchSegmenter:
    """The network in channels_last (NHWC) memory at every precision: oneDNN's convolutions then read and write the
    tensors as they are, where NCHW ones are reordered to a blocked layout and back around every convolution (fp32
    tiled predict of unet_paper ran 1.17-1.59x faster on a 2-core AVX2 CPU, docs/speed.md). ``precision`` bf16
    adds bfloat16 autocast, about twice as fast again on CPUs with AVX-512 BF16 or AMX; masks then differ from fp32
    at a few pixels near the threshold (docs/speed.md measures by how much)."""

    def __init__(self, model: nn.Module, info: ModelInfo, device: str = "auto", precision: str = "32") -> None:
        if str(precision) not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        self.network = ProbabilityModel.for_model(model, info).to(self.device).eval()
        self.network.to(memory_format=torch.channels_last)
        self.bf16 = str(precision) == "bf16"
        self.info = info

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "32") -> TorchSegmenter:
        model, info = load_model(path)
        return cls(model, info, device, precision)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:
            return self.network(batch).float().cpu().numpy()
