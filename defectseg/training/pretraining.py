"""Stage-1 objectives (``pretrain_task=``): one builder per objective, each training the encoder that stage 2 loads.

- ``classification``: the paper's; the encoder + a fully connected head learns crack / no-crack photos.
- ``segmentation``: the whole U-Net learns crack masks of another domain, with stage 2's task, loss and metrics.
- ``self_supervised``: masked-image reconstruction of unlabelled photos (SimMIM, adapted to convnets).

``pretrain.py`` stays the same for all three: it asks here for the model's build arguments, the data
module, and an :class:`Objective` (the LightningModule, what stage 1 trains besides the encoder, the
metrics to report, and the extra files to write).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from defectseg.models import EncoderClassifier
from defectseg.models.encoder_io import save_decoder
from defectseg.models.segmentation import SegmentationModel, count_parameters
from defectseg.training.modules import (
    ClassificationTask,
    SegmentationTask,
    adam,
    images_to_float,
    prepare_network,
)
from defectseg.training.runner import calibrate_features
from defectseg.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)

TASKS = ("classification", "segmentation", "self_supervised")
RECONSTRUCTION_CHANNELS = 3


@dataclass
class Objective:
    """What ``run_pretrain`` needs from an objective; every objective monitors ``val/loss`` (lower is better)."""

    name: str
    task: L.LightningModule
    encoder: nn.Module
    trained_besides_encoder: (
        int  # parameters of the head / decoder that stage 1 trains and stage 2 does not take as such
    )
    metric_names: tuple[str, ...]  # reported as best_val_<name> and test_<name>, besides the loss
    save_extra: Callable[[Path], dict[str, str]] = field(default=lambda directory: {})


def task_name(cfg: DictConfig) -> str:
    name = str(cfg.pretrain_task.name)
    if name not in TASKS:
        raise UserError(f"pretrain_task.name={name!r} is not one of {', '.join(TASKS)} (choose with pretrain_task=...)")
    return name


def model_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Build arguments of cfg.model the objective needs: self-supervision repaints 3 colour channels."""
    return {"num_classes": RECONSTRUCTION_CHANNELS} if task_name(cfg) == "self_supervised" else {}


def build_datamodule(cfg: DictConfig) -> Any:
    """The data set, checked against the objective; self-supervision takes any data set's train images (never its
    labels)."""
    from defectseg.data.datamodules import UnlabelledImageDataModule

    name = task_name(cfg)
    datamodule = instantiate(cfg.dataset)
    if name == "self_supervised":
        return (
            datamodule
            if isinstance(datamodule, UnlabelledImageDataModule)
            else UnlabelledImageDataModule.of(datamodule)
        )
    if datamodule.task != name:
        suggestion = {
            "classification": "dataset=folder_cls, real_crack_cls",
            "segmentation": "dataset=folder_seg, real_crack_seg",
        }[name]
        raise UserError(
            f"pretrain_task={name} needs a {name} data set ({suggestion}...), but dataset={datamodule.name} is a "
            f"{datamodule.task} set"
        )
    return datamodule


def build_objective(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> Objective:
    builders = {"classification": _classification, "segmentation": _segmentation, "self_supervised": _self_supervised}
    return builders[task_name(cfg)](cfg, model, datamodule)


def _common_task_args(cfg: DictConfig) -> dict[str, Any]:
    return {
        "lr": float(cfg.optim.lr),
        "weight_decay": float(cfg.optim.weight_decay),
        "channels_last": bool(cfg.channels_last),
        "compile": bool(cfg.get("compile", False)),
    }


def _classification(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> Objective:
    network = EncoderClassifier(
        model,
        num_classes=datamodule.num_classes,
        hidden=list(cfg.head.hidden),
        dropout=float(cfg.head.dropout),
        pooling=str(cfg.head.pooling),
    )
    task = ClassificationTask(network, num_classes=datamodule.num_classes, **_common_task_args(cfg))
    return Objective("classification", task, model.encoder, count_parameters(network.head), ("accuracy", "auroc"))


def _segmentation(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> Objective:
    """Stage 2's SegmentationTask on another domain's masks; the features are calibrated as in stage 2 (scratch)."""
    options = cfg.pretrain_task
    if cfg.get("calibrate_features", True):
        calibrate_features(model, datamodule, int(cfg.get("calibration_batches", 8)))
    keys = ("bce_weight", "dice_weight", "threshold", "empty_score", "preview_images")
    task = SegmentationTask(model, **_common_task_args(cfg), **{key: options[key] for key in keys if key in options})
    besides = count_parameters(model.decoder) + count_parameters(model.segmentation_head)
    return Objective(
        "segmentation",
        task,
        model.encoder,
        besides,
        ("dice",),
        _decoder_writer(model, bool(options.get("save_decoder", True)), include_head=True),
    )


def _self_supervised(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> Objective:
    options = cfg.pretrain_task
    task = MaskedReconstructionTask(
        model,
        mask_ratio=float(options.mask_ratio),
        patch_size=int(options.patch_size),
        normalize_target=bool(options.get("normalize_target", False)),
        preview_images=int(options.get("preview_images", 4)),
        **_common_task_args(cfg),
    )
    besides = count_parameters(model.decoder) + count_parameters(model.segmentation_head) + task.mask_token.numel()
    # the 3-channel reconstruction head is no start for a 1-channel defect head: only the decoder is written
    return Objective(
        "self_supervised",
        task,
        model.encoder,
        besides,
        (),
        _decoder_writer(model, bool(options.get("save_decoder", True)), include_head=False),
    )


def _decoder_writer(model: SegmentationModel, enabled: bool, include_head: bool) -> Callable[[Path], dict[str, str]]:
    def write(directory: Path) -> dict[str, str]:
        return (
            {"decoder_weights": str(save_decoder(model, directory, model.architecture, include_head=include_head))}
            if enabled
            else {}
        )

    return write


# --- masked-image reconstruction -----------------------------------------------------------------


def random_patch_mask(
    batch: int,
    height: int,
    width: int,
    patch_size: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> torch.Tensor:
    """``(batch, 1, height, width)`` bool, True where hidden: exactly round(ratio * patches) squares per image."""
    rows, cols = height // patch_size, width // patch_size
    patches = rows * cols
    hidden = min(patches, max(1, round(ratio * patches))) if ratio > 0 else 0
    ranks = (
        torch.rand(batch, patches, generator=generator, device=None if generator is not None else device)
        .argsort(dim=1)
        .argsort(dim=1)
    )
    mask = (ranks < hidden).view(batch, 1, rows, cols)
    return mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3).to(device)


def patch_normalized(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each patch and channel standardised on its own (MAE's normalised-pixel target)."""
    b, c, h, w = images.shape
    patches = images.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    mean = patches.mean(dim=(3, 5), keepdim=True)
    var = patches.var(dim=(3, 5), keepdim=True, unbiased=False)
    return ((patches - mean) / (var + 1e-6).sqrt()).reshape(b, c, h, w)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the hidden pixels only: visible pixels are copied, not learned."""
    weight = mask.to(prediction.dtype).expand_as(prediction)
    return ((prediction - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)


class MaskedReconstructionTask(L.LightningModule):
    """SimMIM for a convnet U-Net: hide random ``patch_size`` squares (``mask_ratio`` of them) behind a learned
    fill colour, repaint them with a 3-channel head, L1 on the hidden pixels only.

    Why this objective: it needs no labels, so the target set's own (train) photos can pretrain the
    encoder, and repainting a hidden square from its surroundings asks for local structure (edges, texture,
    thin dark lines), which is what a segmentation decoder needs, unlike an image-level objective. The
    target is the normalised photo (the model's own input scale); L1 as in SimMIM, where it matched or beat
    L2. ``normalize_target`` switches to MAE's per-patch normalised target, which ignores a patch's
    brightness; off by default because on flat steel patches it amplifies sensor noise into the target.
    The fill colour is learned (zero at start = the normalisation's mean colour), so a hidden square is
    never mistaken for a black crack. Validation hides the same squares every epoch (a fixed generator),
    so ``val/loss`` compares epochs fairly.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_ratio: float = 0.6,
        patch_size: int = 16,
        normalize_target: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        preview_images: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        self.mask_token = nn.Parameter(torch.zeros(1, RECONSTRUCTION_CHANNELS, 1, 1))
        self.preview: dict[str, torch.Tensor] | None = None
        self._eval_generator: torch.Generator | None = None
        prepare_network(self.model, channels_last, compile)

    def hide(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] with the hidden squares set to the learned fill colour."""
        normalize = self.model.normalize
        fill = (normalize.mean + normalize.std * self.mask_token).to(images.dtype)
        return torch.where(mask, fill, images)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        target = self.model.normalize(images)
        return patch_normalized(target, self.hparams.patch_size) if self.hparams.normalize_target else target

    def _mask_for(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = images.shape
        p = self.hparams.patch_size
        if h % p or w % p:
            raise ConfigError(f"pretrain_task.patch_size={p} must divide the image size {h}x{w} (dataset.image_size)")
        return random_patch_mask(b, h, w, p, self.hparams.mask_ratio, generator=generator, device=images.device)

    def _step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = images_to_float(batch["image"], self.hparams.channels_last)
        mask = self._mask_for(images, generator)
        prediction = self.model(self.hide(images, mask)).float()
        return masked_l1(prediction, self.target(images).float(), mask), {
            "images": images,
            "mask": mask,
            "prediction": prediction,
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_generator = torch.Generator().manual_seed(0)

    def on_test_epoch_start(self) -> None:
        self._eval_generator = torch.Generator().manual_seed(0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, parts = self._step(batch, self._eval_generator)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]), sync_dist=True)
        if batch_idx == 0 and self.hparams.preview_images:
            k = self.hparams.preview_images
            self.preview = {name: tensor[:k].detach() for name, tensor in parts.items()}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _ = self._step(batch, self._eval_generator)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)

    def reconstruction(self, images: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The prediction back in [0, 1] pixels (a normalised-patch prediction gets each patch's true mean and
        spread)."""
        normalize = self.model.normalize
        if self.hparams.normalize_target:
            p = self.hparams.patch_size
            b, c, h, w = images.shape
            normalized = normalize(images).reshape(b, c, h // p, p, w // p, p)
            mean, std = (
                normalized.mean(dim=(3, 5), keepdim=True),
                normalized.std(dim=(3, 5), keepdim=True, unbiased=False),
            )
            prediction = (prediction.reshape(b, c, h // p, p, w // p, p) * std + mean).reshape(b, c, h, w)
        return (prediction * normalize.std + normalize.mean).clamp(0, 1)

    def preview_grid(self) -> tuple[str, torch.Tensor] | None:
        """Rows of (masked input | reconstruction, visible pixels pasted back | original) for TensorBoard."""
        if self.preview is None:
            return None
        from torchvision.utils import make_grid

        images, mask = self.preview["images"].float(), self.preview["mask"]
        with torch.no_grad():
            repainted = torch.where(mask, self.reconstruction(images, self.preview["prediction"].float()), images)
            tiles = torch.stack([self.hide(images, mask), repainted, images], dim=1).flatten(0, 1)
        return "val/preview (masked input | reconstruction | original)", make_grid(
            tiles.float().cpu().clamp(0, 1), nrow=3, padding=2, pad_value=1.0
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self, self.hparams.lr, self.hparams.weight_decay)
