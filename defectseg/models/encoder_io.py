"""Exchange of encoder weights between the stages: safetensors + a JSON description.

Safetensors cannot run code when read, unlike a pickle; the JSON lets stage 2 refuse an
encoder trained for another architecture with a message instead of a shape error. Other
weights files (e.g. ImageNet weights copied to an offline machine) load through the same
key and shape checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from defectseg.utils.errors import MissingFileError, UserError
from defectseg.utils.io import atomic_write_text, atomic_writer
from defectseg.utils.safe_load import torch_load_safely

WEIGHTS_NAME = "encoder.safetensors"
DECODER_WEIGHTS_NAME = (
    "decoder.safetensors"  # stage 1 with a decoder (segmentation, self-supervised): stage 2's init_decoder=true
)
DECODER_PARTS = ("decoder", "segmentation_head")
INFO_NAME = "encoder.json"
FORMAT = "defectseg-encoder"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class EncoderMismatchError(UserError, ValueError):
    """The encoder file was written for another architecture than the one being built."""


def save_encoder(
    encoder: nn.Module, directory: Path, architecture: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
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


def save_decoder(model: nn.Module, directory: Path, architecture: dict[str, Any], include_head: bool = True) -> Path:
    """Write ``decoder.safetensors``: the decoder's tensors (``decoder.*``) and, with ``include_head``, the head's
    (``segmentation_head.*``)."""
    parts = DECODER_PARTS if include_head else DECODER_PARTS[:1]
    state = {
        f"{part}.{name}": tensor.detach().cpu().contiguous()
        for part in parts
        for name, tensor in getattr(model, part).state_dict().items()
    }
    payload = save(
        state,
        metadata={"format": FORMAT, "architecture": json.dumps(architecture, sort_keys=True), "parts": ",".join(parts)},
    )
    path = Path(directory) / DECODER_WEIGHTS_NAME
    with atomic_writer(path, binary=True) as handle:
        handle.write(payload)
    return path


def load_decoder(model: nn.Module, directory: str | Path, architecture: dict[str, Any]) -> list[str]:
    """Load a stage-1 ``decoder.safetensors`` into ``model`` after checking architecture, names and shapes; returns the
    parts loaded.

    FileNotFoundError when there is none; EncoderMismatchError (naming the file) when it does not fit.
    """
    path = Path(directory).expanduser() / DECODER_WEIGHTS_NAME
    if not path.is_file():
        raise MissingFileError(f"no {DECODER_WEIGHTS_NAME} in {path.parent}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise EncoderMismatchError(f"{path}: unreadable safetensors file ({error})") from error
    try:
        found = json.loads(metadata.get("architecture", "null"))
    except json.JSONDecodeError:
        found = None
    if found != architecture:
        raise EncoderMismatchError(
            f"{path} was trained for architecture {found}, but this run builds "
            f"{architecture}{_differences(found, architecture)}"
        )
    by_part: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        part, _, key = name.partition(".")
        if part not in DECODER_PARTS:
            raise EncoderMismatchError(f"{path}: tensor {name!r} belongs to none of {', '.join(DECODER_PARTS)}")
        by_part.setdefault(part, {})[key] = tensor
    if "decoder" not in by_part:
        raise EncoderMismatchError(f"{path}: holds no decoder tensors")
    head = by_part.get("segmentation_head")
    if head is not None and _shapes(head) != _shapes(model.segmentation_head.state_dict()):
        del by_part["segmentation_head"]  # another number of classes: the head starts fresh, the decoder transfers
        log.info("%s: its head has other output channels than this run's classes; the head starts from random", path)
    for part, part_state in by_part.items():
        load_checked(getattr(model, part), part_state, f"{path} ({part})")
    return [part for part in DECODER_PARTS if part in by_part]


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def resolve_encoder_path(path: str | Path) -> Path:
    """Accept the weights file or the stage-1 run directory (or its ``latest`` link)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise MissingFileError(f"no pretrained encoder at {path}")
    return path


def load_encoder(encoder: nn.Module, path: str | Path, architecture: dict[str, Any]) -> dict[str, Any]:
    """Load stage-1 weights into ``encoder`` after checking they were made for ``architecture``."""
    weights_path = resolve_encoder_path(path)
    info_path = weights_path.with_name(INFO_NAME)
    if not info_path.is_file():
        raise EncoderMismatchError(
            f"{weights_path}: the description {INFO_NAME} beside it is missing; it is not a stage-1 encoder"
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise EncoderMismatchError(f"{info_path}: not valid JSON ({error})") from error
    if info.get("format") != FORMAT:
        raise EncoderMismatchError(f"{info_path}: format is {info.get('format')!r}, expected {FORMAT!r}")
    found = info.get("architecture")
    if found != architecture:
        raise EncoderMismatchError(
            f"{weights_path} was pretrained for architecture {found}, but this run builds "
            f"{architecture}{_differences(found, architecture)}; "
            "pretrain an encoder for this model or point pretrained_encoder= at a matching one"
        )
    expected = info.get("sha256")
    if expected and _sha256(weights_path) != expected:
        raise EncoderMismatchError(
            f"{weights_path}: sha256 does not match {info_path} (file corrupted or replaced); re-run pretraining or "
            "copy the two files together"
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise EncoderMismatchError(f"{weights_path}: unreadable safetensors file ({error})") from error
    load_checked(encoder, state, weights_path)
    return info


def load_checked(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], source: Any, allow_unexpected: bool = False
) -> list[str]:
    """Copy ``state`` into ``encoder`` only if every tensor fits (nothing changes otherwise); returns the keys ignored.

    ``allow_unexpected`` tolerates extra tensors, e.g. the ImageNet classifier of a backbone file.
    """
    current = encoder.state_dict()
    wrong_shape = [
        f"{name}: {tuple(tensor.shape)} in the file, {tuple(current[name].shape)} here"
        for name, tensor in state.items()
        if name in current and tuple(tensor.shape) != tuple(current[name].shape)
    ]
    if wrong_shape:
        raise EncoderMismatchError(f"{source}: tensor shapes do not match the encoder ({'; '.join(wrong_shape[:5])})")
    missing = [name for name in current if name not in state and not name.endswith("num_batches_tracked")]
    unexpected = [name for name in state if name not in current]
    if missing or (unexpected and not allow_unexpected):
        raise EncoderMismatchError(
            f"{source}: tensors do not match the encoder ({len(missing)} missing, e.g. {missing[:5]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:5]})"
        )
    extra_blocks = [name for name in unexpected if _extends_a_sequence(encoder, name)]
    if extra_blocks:
        raise EncoderMismatchError(
            f"{source}: the file has blocks this encoder lacks (e.g. {extra_blocks[:3]}); it holds the weights of a "
            "deeper variant"
        )
    encoder.load_state_dict({**current, **{name: tensor for name, tensor in state.items() if name in current}})
    return unexpected


def load_weights_file(encoder: nn.Module, path: str | Path) -> list[str]:
    """Load a local weights file into ``encoder`` (``model.encoder_weights=/path``); returns the tensors it ignored.

    Safetensors, or a state dict saved with ``torch.save`` (read with ``weights_only=True``, so
    no code runs). Keys saved from a whole model (``encoder.``), through DataParallel
    (``module.``) or from timm itself (without smp's ``model.``) fit too.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"model.encoder_weights: no weights file at {path}")
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise EncoderMismatchError(f"{path}: unreadable safetensors file ({str(error).splitlines()[0]})") from None
    else:
        state = torch_load_safely(path, "weights file")  # one-line refusal of a pickle that would run code
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(tensor, torch.Tensor) for tensor in state.values()):
        raise EncoderMismatchError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    state = _align_keys(dict(state), set(encoder.state_dict()))
    ignored = load_checked(encoder, state, path, allow_unexpected=True)
    if ignored:
        log.warning(
            "%s: ignored %d tensors the encoder does not have (e.g. %s)", path, len(ignored), ", ".join(ignored[:3])
        )
    return ignored


def _extends_a_sequence(module: nn.Module, name: str) -> bool:
    """Whether ``name`` continues one of the encoder's block sequences past its end (resnet34's layer1.2 in a
    resnet18)."""
    for part in name.split(".")[:-1]:
        child = dict(module.named_children()).get(part)
        if child is None:
            return part.isdigit()
        module = child
    return False


def _align_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {name.removeprefix(prefix): tensor for name, tensor in state.items()}

    candidates = [
        state,
        strip("module."),
        strip("encoder."),
        strip("module.encoder."),
        {f"model.{name}": tensor for name, tensor in state.items()},
    ]
    return max(candidates, key=lambda candidate: len(expected & candidate.keys()))


def _differences(found: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(found, dict):
        return ""
    keys = [key for key in sorted(set(found) | set(wanted)) if found.get(key) != wanted.get(key)]
    return " (" + ", ".join(f"{key}: {found.get(key)} in the file, {wanted.get(key)} here" for key in keys) + ")"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
