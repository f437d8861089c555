"""All augmentation lives here, behind one small interface (albumentations 2.0.x, MIT).

Transforms work on uint8 HxWxC images and 0/255 masks; tensors stay uint8 until the
training step moves them to the device, where the float conversion is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from defectseg.config.schemas import Augment

Transform = Callable[..., dict[str, Any]]


def build_transform(
    image_size: int,
    train: bool,
    augment: Mapping[str, Any] | None = None,
    grayscale: bool = False,
    label_maps: bool = False,
) -> A.Compose:
    """Resize (area when shrinking, so thin cracks survive), then light photometric/geometric noise for training.

    ``grayscale`` turns every image into grey replicated over 3 channels (all splits), for
    mixing grey and colour sources or measuring how much a model relies on colour.
    ``label_maps``: masks hold class labels (``defectseg.data.classes``): resized by nearest neighbour only.
    """
    settings = Augment(**dict(augment or {}))  # keys and defaults: defectseg/config/schemas.py
    steps: list[A.BasicTransform] = [
        A.Resize(
            image_size,
            image_size,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST if label_maps else cv2.INTER_LINEAR,
            area_for_downscale="image" if label_maps else "image_mask",
        )
    ]
    if train and settings.enabled:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=settings.brightness, contrast_limit=settings.contrast, p=0.5),
            A.GaussNoise(std_range=(0.01, float(settings.noise_std)), p=float(settings.noise_p)),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, float(settings.blur_sigma)), p=float(settings.blur_p)),
        ]
    if grayscale:  # last, so colour noise from the augmentations cannot bring colour back
        steps.append(A.ToGray(num_output_channels=3, p=1.0))
    return A.Compose(steps)


def to_tensors(
    image: np.ndarray, mask: np.ndarray | None = None, label_map: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HxWx3 uint8 -> 3xHxW uint8; 0/255 (or soft after resize) mask -> 1xHxW uint8 in {0, 1}; a label map as it is."""
    image_tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if mask is None:
        return image_tensor, None
    if label_map:
        return image_tensor, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None]
    mask_tensor = torch.from_numpy(np.ascontiguousarray((mask >= 128).astype(np.uint8)))[None]
    return image_tensor, mask_tensor
