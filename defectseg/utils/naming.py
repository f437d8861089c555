"""Short, readable names for sweep job folders (and so for TensorBoard runs).

Hydra's ``override_dirname`` holds every override, paths included: names grow past the
file system's limit and a path value creates nested folders. Only the axes people compare
(recipe, seed, model, data, label budget...) make it into the name, as ``key-value`` pairs joined by ``+``: no ``=``
or ``,``, so a job folder can be passed back as an override value (``checkpoint=.../3_transfer-full+seed-1``).
The job's exact settings are in its ``.hydra/overrides.yaml``; the report reads those and ``metrics.json``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omegaconf import OmegaConf

JOB_NAME_KEYS = {
    "transfer": "transfer",
    "transfer.freeze_depth": "depth",
    "transfer.unfreeze_at": "unfreeze_at",
    "transfer.unfreeze_every": "unfreeze_every",
    "transfer.encoder_lr_scale": "encoder_lr",
    "transfer.level_lr_decay": "level_decay",
    "transfer.warmup": "warmup",
    "freeze": "freeze",  # old names of the recipes
    "seed": "seed",
    "model": "model",
    "model.arch": "arch",
    "model.encoder_name": "encoder",
    "model.encoder_weights": "weights",
    "dataset": "dataset",
    "experiment": "experiment",
    "pretrain_task": "pretrain_task",
    "pretrained_encoder": "encoder_from",  # its last path component: e.g. pretrain_segmentation
    "init_decoder": "init_decoder",
    "dataset.max_train_images": "labels",
    "optim.lr": "lr",
}
MAX_LENGTH = 100


def job_name(overrides: Sequence[str]) -> str:
    parts = []
    for override in overrides or ():
        key, _, value = str(override).lstrip("+~").partition("=")
        if key in JOB_NAME_KEYS:
            if key == "pretrained_encoder":
                value = value.rstrip("/").rsplit("/", 1)[-1]
            value = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-") or "none"  # no =, ',' or / in a name
            parts.append(f"{JOB_NAME_KEYS[key]}-{value}")
    return "+".join(sorted(parts))[:MAX_LENGTH] or "run"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("job_name"):
        OmegaConf.register_new_resolver("job_name", job_name)
