"""Torch datasets over cached, resized arrays and the loader plumbing (workers, seeding, collation) that the
stage DataModules (``datamodules.py``) share."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from defectseg.data import readers
from defectseg.data.layouts import Mask, Sample
from defectseg.data.transforms import to_tensors

log = logging.getLogger(__name__)


def resolve_num_workers(num_workers: int | str, processes: int = 1) -> int:
    """``auto``: leave the model the cores it needs; data loading from the cache is light.
    ``processes``: training processes sharing this machine (DDP), which share its cores too."""
    if num_workers != "auto":
        return int(num_workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus //= max(1, int(processes))
    return 0 if cpus <= 2 else min(8, cpus // 2)


def seed_augmentations(dataset: Dataset, seed: int) -> None:
    """albumentations' Compose ignores global seeds; without this, same seed would not mean same run."""
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def init_worker(worker_id: int) -> None:
    """Each worker: Lightning's seeding of numpy/random, and a distinct, reproducible augmentation seed."""
    from lightning.fabric.utilities.seed import pl_worker_init_function
    from torch.utils.data import get_worker_info

    pl_worker_init_function(worker_id)
    info = get_worker_info()
    if info is not None:
        seed_augmentations(info.dataset, int(torch.initial_seed() % (2**31 - 1)))


def collate_in_numpy(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate, with the tensors stacked by NumPy (a plain copy) for loading in the main process:
    torch.stack of uint8 images runs an OpenMP parallel region, and on a busy machine that waits for a
    descheduled thread (measured on the shared 2-core CPU: 150-190 ms per stacked tensor instead of 0.05 ms)."""
    from torch.utils.data import default_collate

    return {
        key: torch.from_numpy(np.stack([sample[key].numpy() for sample in samples]))
        if isinstance(samples[0][key], torch.Tensor)
        else default_collate([sample[key] for sample in samples])
        for key in samples[0]
    }


class ImageCache:
    """Decoded images (and masks), pre-resized to the training size, held in memory after first use."""

    def __init__(self, image_size: int, enabled: bool = True) -> None:
        self.image_size = image_size
        self.enabled = enabled
        self.label_maps = False  # masks are label maps (classes, ignored pixels): resized by nearest neighbour
        self._store: dict[Path, Any] = {}

    def image(self, path: Path) -> np.ndarray:
        if path in self._store:
            return self._store[path]
        image = _shrink(readers.read_image(path), self.image_size)
        if self.enabled:
            self._store[path] = image
        return image

    def pair(self, image_path: Path, mask: Mask) -> tuple[np.ndarray, np.ndarray]:
        """Image and its 0/255 mask (or label map); the mask must match the image's original size."""
        if image_path in self._store:
            return self._store[image_path]
        image = readers.read_image(image_path)
        if self.label_maps:
            mask = _shrink(mask.load(image.shape[:2]), self.image_size, nearest=True)
        else:
            mask = _shrink(mask.load(image.shape[:2]) * np.uint8(255), self.image_size)
        pair = (_shrink(image, self.image_size), mask)
        if self.enabled:
            self._store[image_path] = pair
        return pair


def _shrink(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Pre-resize for the cache with the same resize the eval transform uses (idempotent afterwards);
    ``nearest`` for label maps, whose values are classes, not intensities."""
    import cv2

    if array.shape[0] == size and array.shape[1] == size:
        return array
    if nearest:
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_NEAREST)
    interpolation = cv2.INTER_AREA if min(array.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interpolation)


class ClassificationDataset(Dataset):
    def __init__(self, samples: Sequence[tuple[Path, int]], cache: ImageCache, transform: Any) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        image = self.transform(image=self.cache.image(path))["image"]
        image_tensor, _ = to_tensors(image)
        return {"image": image_tensor, "label": torch.tensor(label, dtype=torch.long), "index": index}


class SegmentationDataset(Dataset):
    def __init__(self, pairs: Sequence[Sample], cache: ImageCache, transform: Any) -> None:
        self.pairs = list(pairs)
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_ref = self.pairs[index]
        image, mask = self.cache.pair(image_path, mask_ref)
        out = self.transform(image=image, mask=mask)
        image, mask = to_tensors(out["image"], out["mask"], label_map=self.cache.label_maps)
        return {"image": image, "mask": mask, "index": index}
