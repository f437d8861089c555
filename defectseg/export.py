"""Export a fine-tuned model for deployment: ONNX (any height and width) and TorchScript, each checked.

    python -m defectseg.export [checkpoint=RUN_DIR|CKPT] [formats=[onnx]] [opset=18] [check.sample=PHOTO]

The exported graph takes N x 3 x H x W float32 images in [0, 1] (H, W multiples of the
model's size multiple; predict pads to them) and returns defect probabilities, N x K x H x W: K = 1 for a
binary model, background + C (softmax inside) or C (multilabel: sigmoids) for a model with classes; input
normalisation is inside. Predict's settings (tuned threshold, tile size, size multiple, the classes, multilabel and
per-class thresholds) travel in the ONNX metadata and TorchScript's extra files. After writing,
the export runs ONNX Runtime (and the TorchScript module) against PyTorch on two sample
shapes and says whether they agree within ``check.atol``; exit 1 if not.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from defectseg.config import validate_config
from defectseg.config.entry import entry_point
from defectseg.data.readers import read_image
from defectseg.inference.onnx_runtime import OnnxSegmenter
from defectseg.inference.runtime import ONNX_METADATA_KEY, ModelInfo, resolve_model_path
from defectseg.inference.tiling import round_up
from defectseg.inference.torch_runtime import ProbabilityModel, load_model
from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_bytes, atomic_write_json
from defectseg.utils.naming import register_resolvers
from defectseg.utils.run_directory import make_output_dir

log = logging.getLogger(__name__)
register_resolvers()

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 17
TORCHSCRIPT_INFO_NAME = "defectseg.json"


def parity_images(info: ModelInfo, sample: str | None) -> list[np.ndarray]:
    """Two batches of different shapes (one square, one not, batch 1 and 2) from a photo or a made-up one."""
    side = round_up(info.tile_size or 4 * info.multiple, info.multiple)
    shapes = [(1, side, side), (2, round_up(max(side // 2, 1), info.multiple), side + info.multiple)]
    height, width = max(s[1] for s in shapes), max(s[2] for s in shapes)
    if sample:
        photo = cv2.resize(read_image(sample), (width, height), interpolation=cv2.INTER_AREA)
    else:  # smooth texture with a dark crack: probabilities land between 0 and 1, not only at the extremes
        rng = np.random.default_rng(0)
        photo = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3)).astype(np.uint8), (0, 0), 3)
        cv2.line(photo, (0, height // 3), (width - 1, 2 * height // 3), (25, 25, 25), max(1, side // 64))
    images = np.ascontiguousarray(photo.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    return [np.stack([images[:, :h, :w]] * n) for n, h, w in shapes]


def export_onnx(network: torch.nn.Module, info: ModelInfo, path: Path, opset: int, example: np.ndarray) -> None:
    """Dynamo export with symbolic batch, height and width (multiples of ``info.multiple``), predict's settings in the
    metadata."""
    from torch.export import Dim

    dynamic = (
        {
            0: Dim("batch", min=1),
            2: info.multiple * Dim("height_blocks", min=1),
            3: info.multiple * Dim("width_blocks", min=1),
        },
    )
    for chatty in ("onnx_ir", "onnxscript"):  # their optimiser passes log every step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            network,
            (torch.from_numpy(example),),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    except Exception as error:
        raise UserError(
            f"ONNX export of {info.source} failed: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    program.model.metadata_props[ONNX_METADATA_KEY] = json.dumps(info.to_dict())
    atomic_write_bytes(path, program.model_proto.SerializeToString())


def export_torchscript(network: torch.nn.Module, info: ModelInfo, path: Path, example: np.ndarray) -> None:
    """A traced module (shapes are traced symbolically: it runs at other sizes), settings as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer warnings about shape arithmetic
        traced = torch.jit.trace(network, torch.from_numpy(example), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_INFO_NAME: json.dumps(info.to_dict())})
    atomic_write_bytes(path, buffer.getvalue())


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")


def largest_difference(run: Any, images: list[np.ndarray], references: list[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(run(batch)) - reference).max()) for batch, reference in zip(images, references))


def run_export(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg, "export")
    formats = [str(f) for f in cfg.formats]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UserError(f"formats={formats}: choose from {list(FORMATS)}")
    if int(cfg.opset) < MIN_OPSET:
        raise UserError(f"opset={cfg.opset}: at least {MIN_OPSET} is needed")
    source = resolve_model_path(cfg.checkpoint)
    if source.suffix.lower() == ".onnx":
        raise UserError(f"{source} is already an exported model: give a fine-tune run directory or its .ckpt")
    output_dir = make_output_dir(cfg.output_dir, "output_dir")  # before the slow work: a file in the way is one line
    model, info = load_model(source)
    network = ProbabilityModel.for_model(model, info).eval()
    images = parity_images(info, cfg.check.sample)
    with torch.no_grad():
        references = [network(torch.from_numpy(batch)).numpy() for batch in images]
    atol = float(cfg.check.atol)
    exported: dict[str, Any] = {}
    if "onnx" in formats:
        path = output_dir / "model.onnx"
        export_onnx(network, info, path, int(cfg.opset), images[0])
        difference = largest_difference(OnnxSegmenter(path, device="cpu"), images, references)
        exported["onnx"] = {
            "path": str(path),
            "opset": int(cfg.opset),
            "runtime": "onnxruntime (CPU)",
            "max_abs_difference": difference,
            "ok": difference <= atol,
        }
    if "torchscript" in formats:
        path = output_dir / "model.torchscript.pt"
        export_torchscript(network, info, path, images[0])
        scripted = load_torchscript(path)
        with torch.no_grad():
            difference = largest_difference(lambda batch: scripted(torch.from_numpy(batch)).numpy(), images, references)
        exported["torchscript"] = {
            "path": str(path),
            "runtime": "torch.jit",
            "max_abs_difference": difference,
            "ok": difference <= atol,
        }

    shapes = [list(batch.shape) for batch in images]
    report = {
        "source": str(source.resolve()),
        "model": info.to_dict(),
        "check": {"atol": atol, "shapes": shapes, "sample": cfg.check.sample},
        "exported": exported,
    }
    atomic_write_json(output_dir / "export.json", report)
    for name, result in exported.items():
        verdict = "matches" if result["ok"] else "DOES NOT match"
        log.info(
            "%s: %s %s PyTorch within %g on shapes %s (max |Δp| = %.2e) -> %s",
            name,
            result["runtime"],
            verdict,
            atol,
            shapes,
            result["max_abs_difference"],
            result["path"],
        )
    return report


@entry_point("export")
def main(cfg: DictConfig) -> None:
    report = run_export(cfg)
    bad = [name for name, result in report["exported"].items() if not result["ok"]]
    if bad:
        raise UserError(
            f"exported {', '.join(bad)} differ from PyTorch by more than check.atol={report['check']['atol']} (see "
            f"{Path(cfg.output_dir) / 'export.json'})"
        )


if __name__ == "__main__":
    main()
