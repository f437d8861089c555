"""Deterministic train/val/test splits.

The split has its own seed (``split_seed``), separate from the training seed, so every
job of a sweep is evaluated on the same test images and results pair up across seeds.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from defectseg.utils.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ConfigError(f"dataset.split_fractions must hold three numbers (train, val, test), got {list(fractions)}")
    train, val, test = (float(f) for f in fractions)
    if min(train, val, test) < 0 or abs(train + val + test - 1.0) > 1e-6:
        raise ConfigError(f"dataset.split_fractions={list(fractions)} must be non-negative and sum to 1")
    if train <= 0 or val <= 0:
        raise ConfigError(f"dataset.split_fractions={list(fractions)} leaves no training or validation images")
    return train, val, test


def split_indices(
    labels: Sequence[int], fractions: Sequence[float], seed: int, groups: Sequence[Hashable] | None = None
) -> dict[str, list[int]]:
    """Shuffle within each label (stratified), then cut by fractions; rounding gives val/test at least one item when
    possible.

    With ``groups`` (one key per item), every group lands whole in one split (see ``split_groups``).
    """
    if groups is not None:
        return split_groups(labels, groups, fractions, seed)
    _train_frac, val_frac, test_frac = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    labels = np.asarray(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_val = round(n * val_frac)
        n_test = round(n * test_frac)
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
        raise ConfigError(f"dataset.max_train_images must be at least 1, got {budget}")
    order = np.random.default_rng([seed, 7919]).permutation(len(indices))
    return sorted(indices[i] for i in order[:budget])


def group_keys(paths: Sequence[str | Path], pattern: str | None, require_match: bool = True) -> list[str] | None:
    """One group per item from its file name (no extension): the regex's first group, or its whole match.

    Crops cut from one photo overlap or share a scene, so they must stay in one split
    (``dataset.split_groups``, e.g. ``^(.+)_x\\d+_y\\d+$`` for ``<photo>_x158_y0.jpg``). A name the
    regex does not match is a group of its own (keys ``file:...``; matched ones are ``group:...``);
    a regex matching no name at all is refused (a typo would otherwise split image by image, silently).
    """
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"dataset.split_groups={pattern!r} is not a valid regular expression ({error})") from None
    keys, matched = [], 0
    for path in paths:
        stem = Path(path).stem
        match = regex.search(stem)
        if match:
            matched += 1
            keys.append("group:" + (match.group(1) if regex.groups else match.group(0)))
        else:
            keys.append("file:" + str(path))
    if require_match and paths and not matched:
        raise ConfigError(f"dataset.split_groups={pattern!r} matches no file name (e.g. {Path(paths[0]).stem!r})")
    return keys


def split_groups(
    labels: Sequence[int], groups: Sequence[Hashable], fractions: Sequence[float], seed: int
) -> dict[str, list[int]]:
    """Whole groups to splits, close to the fractions within each label (greedy, largest groups first).

    Groups are visited in a seeded shuffle, stably sorted by size, and each goes to the split
    that most needs its labels; val (and test, when asked for) get a group whenever there are
    enough groups.
    """
    fracs = dict(zip(SPLIT_NAMES, check_fractions(fractions)))
    labels = np.asarray(labels)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} group keys for {len(labels)} items")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    keys = sorted(members, key=str)
    keys = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    keys.sort(key=lambda k: -len(members[k]))  # stable: equal sizes keep the seeded order
    values = np.unique(labels)
    totals = np.array([(labels == v).sum() for v in values], dtype=float)
    target = {name: frac * totals for name, frac in fracs.items()}
    count = {name: np.zeros(len(values)) for name in SPLIT_NAMES}
    assigned: dict[str, list[Hashable]] = {name: [] for name in SPLIT_NAMES}
    for key in keys:
        have = np.array([(labels[members[key]] == v).sum() for v in values], dtype=float)

        def score(name: str, have: np.ndarray = have) -> tuple[float, float]:
            need = np.maximum(target[name] - count[name], 0.0)
            return float(np.minimum(have, need).sum() - np.maximum(have - need, 0.0).sum()), float(
                need.sum() / max(target[name].sum(), 1e-9)
            )

        name = max((n for n in SPLIT_NAMES if fracs[n] > 0), key=score)
        assigned[name].append(key)
        count[name] += have
    for name in ("val", "test"):
        if fracs[name] > 0 and not assigned[name] and len(assigned["train"]) > 1:
            smallest = min(assigned["train"], key=lambda k: len(members[k]))
            assigned["train"].remove(smallest)
            assigned[name].append(smallest)
    return {name: sorted(i for key in assigned[name] for i in members[key]) for name in SPLIT_NAMES}


def cap_train_split(
    splits: dict[str, list[int]], train_size: int | None, seed: int, groups: Sequence[Hashable] | None = None
) -> dict[str, list[int]]:
    """At most ``train_size`` train items (the same choice as ``subset_for_budget``); the surplus joins test.

    The paper's budget of labelled images on a set larger than it needs: the images left over
    make the test set larger instead of being dropped, and the test set stays the same for
    every smaller label budget taken from the capped train split. With ``groups``, whole groups
    are kept or moved, so the cap never splits a group.
    """
    if train_size is None or train_size >= len(splits["train"]):
        return splits
    if train_size < 1:
        raise ConfigError(f"dataset.train_split_size must be at least 1 or null, got {train_size}")
    if groups is None:
        keep = subset_for_budget(splits["train"], train_size, seed)
    else:
        members: dict[Hashable, list[int]] = {}
        for index in splits["train"]:
            members.setdefault(groups[index], []).append(index)
        keys = sorted(members, key=str)
        keep = []
        for i in np.random.default_rng([seed, 7919]).permutation(len(keys)):
            if not keep or len(keep) + len(members[keys[i]]) <= train_size:
                keep += members[keys[i]]
        keep.sort()
    surplus = sorted(set(splits["train"]) - set(keep))
    return {**splits, "train": keep, "test": sorted(splits.get("test", []) + surplus)}
