"""Which model to run: a fine-tuned checkpoint (PyTorch) or an exported ONNX file (ONNX Runtime).

Both answer the same call, N x 3 x h x w float32 images in [0, 1] -> N x K x h x w probabilities (K = 1 for a
binary model, C for a multilabel one, background + C for a softmax one), and carry a ``ModelInfo`` (threshold, tile
size, size multiple, classes), so the rest of predict does not know which one runs. Nothing here imports torch: an
ONNX model runs with numpy and onnxruntime alone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from defectseg.utils.errors import UserError

log = logging.getLogger(__name__)

#: key of the JSON ModelInfo in an exported ONNX model's metadata
ONNX_METADATA_KEY = "defectseg"
DEFAULT_THRESHOLD = 0.5
#: checkpoint key under which stage 2 stores the tuned threshold (plain floats: weights_only loading); here, not in
#: training.metrics, so loading a checkpoint for predict does not import torchmetrics (and matplotlib, scipy, sympy)
TUNED_THRESHOLD_KEY = "tuned_threshold"


@dataclass
class ModelInfo:
    """What predict needs to know besides the weights; travels inside exported models."""

    source: str
    runtime: str
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "default"
    tile_size: int | None = None
    multiple: int = 32
    architecture: dict[str, Any] = field(default_factory=dict)
    #: how training resized its photos (defectseg.inference.scale.training_input_scale): predict's scale=auto
    input_scale: dict[str, Any] | None = None
    #: the defect classes of a model trained with dataset.classes (None: binary); a softmax model's output has
    #: background + one channel per class (channel 0 background), a multilabel one one sigmoid per class
    classes: list[str] | None = None
    multilabel: bool = False
    #: multilabel: one threshold per class (tuned per class by stage 2 when it could)
    class_thresholds: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything; a binary model's without the class fields (its metadata and summaries as before classes)."""
        info = asdict(self)
        if self.classes is None:
            for key in CLASS_FIELDS:
                info.pop(key)
        return info

    @property
    def channels(self) -> int:
        """Output channels: 1 (binary), C (multilabel) or background + C (softmax)."""
        if self.classes is None:
            return 1
        return len(self.classes) + (0 if self.multilabel else 1)


#: ModelInfo's fields that only models with classes have (read back from exported models' metadata)
CLASS_FIELDS = ("classes", "multilabel", "class_thresholds")


class Segmenter(Protocol):
    info: ModelInfo

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def resolve_model_path(location: str | Path | None) -> Path:
    """A fine-tune run directory (its best checkpoint), a ``.ckpt`` or an exported ``.onnx`` file."""
    hint = (
        "run `make finetune` first, or set checkpoint=PATH (a fine-tune run directory, its checkpoints/best.ckpt, "
        "or an exported model.onnx)"
    )
    if not location:
        raise UserError(f"no model given: {hint}")
    path = Path(str(location)).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt", path / "model.onnx"):
            if candidate.is_file():
                if candidate.name == "last.ckpt":
                    log.warning("%s has no best.ckpt; using last.ckpt", path)
                return candidate
        raise UserError(f"{path}: holds neither checkpoints/best.ckpt nor model.onnx: {hint}")
    if path.is_file():
        return path
    raise UserError(f"no fine-tuned model at {path}: {hint}")


def load_segmenter(location: str | Path | None, device: str = "auto", precision: str = "32") -> Segmenter:
    """The model behind ``location``; ONNX files run in ONNX Runtime (no torch import), the rest in PyTorch."""
    path = resolve_model_path(location)
    if path.suffix.lower() == ".onnx":
        if str(precision) != "32":
            raise UserError(f"precision={precision} applies to PyTorch checkpoints; {path.name} runs in ONNX Runtime")
        from defectseg.inference.onnx_runtime import OnnxSegmenter

        return OnnxSegmenter(path, device)
    from defectseg.inference.torch_runtime import TorchSegmenter

    return TorchSegmenter.from_checkpoint(path, device, precision)
