"""segmentation_models_pytorch models in the shared wrapper: any smp architecture x encoder, both stages.

smp's encoder, decoder and head become a SegmentationModel, so normalisation buffers,
feature standardisation, freeze policies, stage 1's classifier and the encoder exchange
are the very ones unet_paper uses.
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import segmentation_models_pytorch as smp
from torch import nn

from defectseg.models.encoder_io import load_checked, load_weights_file
from defectseg.models.segmentation import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel
from defectseg.utils.errors import ConfigError, UserError

#: Seconds to wait for the hub before saying it is unreachable; its client would retry for ~30 s.
HUB_CONNECT_TIMEOUT = 3.0
OFFLINE_HINT = (
    "download the weights where the internet is reachable and pass the file: model.encoder_weights=/path/to/file "
    "(safetensors, or a state dict saved with torch.save; see docs/models.md), "
    "or set HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache"
)


def smp_model(
    arch: str = "unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    in_channels: int = 3,
    num_classes: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **arch_kwargs: Any,
) -> SegmentationModel:
    """smp's ``arch`` (unet, unetplusplus, fpn, deeplabv3plus, ...) on ``encoder_name`` (resnet34, efficientnet-b0,
    tu-<timm name>, ...).

    ``encoder_weights``: None (random init), the name of smp's pretrained weights
    (``imagenet``; downloaded) or a local weights file. ``arch_kwargs`` go to smp's
    model class (e.g. ``decoder_channels``).
    """
    arch = str(arch).lower()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(
            f"model.arch={arch} is not an smp architecture; choose one of {', '.join(smp.MODEL_ARCHITECTURES_MAPPING)}"
        )
    if not (encoder_name.startswith("tu-") or encoder_name in smp.encoders.get_encoder_names()):
        raise ConfigError(
            f"model.encoder_name={encoder_name} is not an smp encoder; see "
            "segmentation_models_pytorch.encoders.get_encoder_names(), or tu-<timm model name>"
        )
    if len(mean) != int(in_channels) or len(std) != int(in_channels):
        raise ConfigError(f"model.mean and model.std need one value per input channel ({in_channels})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # smp's notice on timm- encoder names
        network = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=None,
            encoder_depth=int(encoder_depth),
            in_channels=int(in_channels),
            classes=int(num_classes),
            **arch_kwargs,
        )
    encoder = network.encoder
    model = SegmentationModel(
        encoder,
        network.decoder,
        segmentation_head=network.segmentation_head,
        architecture={
            "name": "smp",
            "encoder_name": encoder_name,
            "in_channels": int(in_channels),
            "encoder_depth": int(encoder_depth),
        },
        name=f"{arch}-{encoder_name}",
        input_multiple=encoder.output_stride if network.requires_divisible_input_shape else 1,
        mean=mean,
        std=std,
    )
    if encoder_weights:
        model.encoder_init = load_starting_weights(
            encoder, encoder_name, str(encoder_weights), int(in_channels), int(encoder_depth)
        )
    return model


def load_starting_weights(encoder: nn.Module, encoder_name: str, weights: str, in_channels: int, depth: int) -> str:
    """A local file when ``weights`` looks like a path, else smp's named weights (downloaded); returns what was
    loaded."""
    if Path(weights).suffix or "/" in weights or "\\" in weights or Path(weights).expanduser().is_file():
        load_weights_file(encoder, weights)
        return str(Path(weights).expanduser().resolve())
    state = download_encoder_state(encoder_name, weights, in_channels, depth)
    load_checked(encoder, state, f"the {weights} weights of {encoder_name}")
    return weights


def download_encoder_state(encoder_name: str, weights: str, in_channels: int = 3, depth: int = 5) -> dict[str, Any]:
    """smp's pretrained encoder weights, or a UserError at once when the hub cannot be reached."""
    reason = hub_unreachable_reason()
    if reason:
        raise UserError(
            f"model.encoder_weights={weights} downloads the {encoder_name} weights, but the Hugging Face hub cannot be "
            f"reached ({reason}): {OFFLINE_HINT}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp's notices on timm- names and tu- weight names
            encoder = smp.encoders.get_encoder(
                encoder_name,
                in_channels=in_channels,
                depth=depth,
                weights=True if encoder_name.startswith("tu-") else weights,
            )
    except (OSError, KeyError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"model.encoder_weights={weights}: could not get the {encoder_name} weights ({first_line}): {OFFLINE_HINT}"
        ) from None
    return encoder.state_dict()


def hub_unreachable_reason(timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why the hub (or the proxy to it) does not accept a connection within ``timeout``, or None.

    With HF_HUB_OFFLINE=1 nothing is probed: the hub client reads its cache and fails fast itself.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    target = urlsplit(constants.ENDPOINT)
    proxy = getproxies().get(target.scheme)
    if proxy and not proxy_bypass(target.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["reason"] = None
        except OSError as error:
            outcome["reason"] = f"{host}:{port}: {error.strerror or error}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "reason" not in outcome:
        return f"{host}:{port}: no answer within {timeout:g} s"
    return outcome["reason"]
