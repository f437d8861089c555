"""Deterministic train/val/test splits.

The split has its own seed (``split_seed``), separate from the training seed, so every
job of a sweep is evaluated on the same test images and results pair up across seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"dataset.split_fractions must hold three numbers (train, val, test), got {list(fractions)}")
    train, val, test = (float(f) for f in fractions)
    if min(train, val, test) < 0 or abs(train + val + test - 1.0) > 1e-6:
        raise ValueError(f"dataset.split_fractions={list(fractions)} must be non-negative and sum to 1")
    if train <= 0 or val <= 0:
        raise ValueError(f"dataset.split_fractions={list(fractions)} leaves no training or validation images")
    return train, val, test


def split_indices(labels: Sequence[int], fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Shuffle within each label (stratified), then cut by fractions; rounding gives val/test at least one item when possible."""
    train_frac, val_frac, test_frac = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    labels = np.asarray(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_val = int(round(n * val_frac))
        n_test = int(round(n * test_frac))
        if n >= 3:
            n_val = max(n_val, 1)
            n_test = max(n_test, 1) if test_frac > 0 else 0
            n_test = min(n_test, max(n - n_val - 1, 0))  # keep at least one training item
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        n_train = n - n_val - n_test
        splits["train"] += members[:n_train].tolist()
        splits["val"] += members[n_train : n_train + n_val].tolist()
        splits["test"] += members[n_train + n_val :].tolist()
    return {name: sorted(indices) for name, indices in splits.items()}


def subset_for_budget(indices: Sequence[int], budget: int | None, seed: int) -> list[int]:
    """The first ``budget`` items of one fixed shuffle: smaller budgets are nested in larger ones."""
    indices = list(indices)
    if budget is None or budget >= len(indices):
        return indices
    if budget < 1:
        raise ValueError(f"dataset.max_train_images must be at least 1, got {budget}")
    order = np.random.default_rng([seed, 7919]).permutation(len(indices))
    return sorted(indices[i] for i in order[:budget])
