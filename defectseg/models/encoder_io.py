"""Exchange of encoder weights between the stages: safetensors + a JSON description.

Safetensors cannot run code when read, unlike a pickle; the JSON lets stage 2 refuse an
encoder trained for another architecture with a message instead of a shape error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from defectseg.utils.io import atomic_write_text, atomic_writer

WEIGHTS_NAME = "encoder.safetensors"
INFO_NAME = "encoder.json"
FORMAT = "defectseg-encoder"
FORMAT_VERSION = 1


class EncoderMismatchError(ValueError):
    """The encoder file was written for another architecture than the one being built."""


def save_encoder(encoder: nn.Module, directory: Path, architecture: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``encoder.safetensors`` then ``encoder.json`` (the JSON last: its presence marks a complete pair)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_NAME
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    payload = save(state, metadata={"format": FORMAT, "architecture": json.dumps(architecture, sort_keys=True)})
    with atomic_writer(weights_path, binary=True) as handle:
        handle.write(payload)
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": architecture,
        "num_parameters": int(sum(t.numel() for t in state.values())),
        "sha256": _sha256(weights_path),
        "weights": WEIGHTS_NAME,
        **(extra or {}),
    }
    atomic_write_text(directory / INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return weights_path


def resolve_encoder_path(path: str | Path) -> Path:
    """Accept the weights file or the stage-1 run directory (or its ``latest`` link)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained encoder at {path}")
    return path


def load_encoder(encoder: nn.Module, path: str | Path, architecture: dict[str, Any]) -> dict[str, Any]:
    """Load stage-1 weights into ``encoder`` after checking they were made for ``architecture``."""
    weights_path = resolve_encoder_path(path)
    info_path = weights_path.with_name(INFO_NAME)
    if not info_path.is_file():
        raise EncoderMismatchError(f"{weights_path}: the description {INFO_NAME} beside it is missing; it is not a stage-1 encoder")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise EncoderMismatchError(f"{info_path}: not valid JSON ({error})") from error
    if info.get("format") != FORMAT:
        raise EncoderMismatchError(f"{info_path}: format is {info.get('format')!r}, expected {FORMAT!r}")
    found = info.get("architecture")
    if found != architecture:
        raise EncoderMismatchError(
            f"{weights_path} was pretrained for architecture {found}, but this run builds {architecture}; "
            "pretrain an encoder for this model or point pretrained_encoder= at a matching one"
        )
    expected = info.get("sha256")
    if expected and _sha256(weights_path) != expected:
        raise EncoderMismatchError(f"{weights_path}: sha256 does not match {info_path} (file corrupted or replaced); re-run pretraining or copy the two files together")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise EncoderMismatchError(f"{weights_path}: unreadable safetensors file ({error})") from error
    current = encoder.state_dict()
    wrong_shape = [name for name, tensor in state.items() if name in current and tuple(tensor.shape) != tuple(current[name].shape)]
    if wrong_shape:
        raise EncoderMismatchError(f"{weights_path}: tensor shapes do not match the encoder ({wrong_shape[:5]})")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderMismatchError(f"{weights_path}: tensors do not match the encoder (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
