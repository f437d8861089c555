"""Lightning DataModules for both stages: folder readers / layouts + split + cache + augmentation.

The sets are small (hundreds to a few thousand photos), so decoded, resized images are
cached in memory once and augmentation runs on uint8 arrays: the model is never starved.
Where masks live and what their values mean is the layout's business (``layouts.py``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, WeightedRandomSampler

from defectseg.config.schemas import Augment
from defectseg.data import readers, validation
from defectseg.data.classes import ClassSpec, class_pixel_counts
from defectseg.data.datasets import (
    ClassificationDataset,
    ImageCache,
    SegmentationDataset,
    collate_in_numpy,
    init_worker,
    resolve_num_workers,
    seed_augmentations,
)
from defectseg.data.layouts import FolderLayout, Layout, Sample
from defectseg.data.splits import cap_train_split, group_keys, split_indices, subset_for_budget
from defectseg.data.transforms import build_transform
from defectseg.utils.errors import ConfigError
from defectseg.utils.io import atomic_write_json

log = logging.getLogger(__name__)


class _FolderDataModule(L.LightningDataModule):
    """What both stages share: synthetic generation, splitting, the up-front data check, loaders, the split file."""

    task = "dataset"

    def __init__(
        self,
        root: str | Sequence[str],
        name: str = "dataset",
        image_size: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        split_groups: str | None = None,
        train_split_size: int | None = None,
        cache: bool = True,
        augment: Augment | Mapping[str, Any] | None = None,  # keys: defectseg/config/schemas.py
        synthetic: dict[str, Any] | None = None,
        samples_per_epoch: int | None = None,
        grayscale: bool = False,
        on_error: str = "raise",
        balance_sources: bool = False,
    ) -> None:
        super().__init__()
        if on_error not in validation.ON_ERROR:
            raise ConfigError(f"dataset.on_error must be one of {', '.join(validation.ON_ERROR)}, got {on_error!r}")
        if int(image_size) < 16:
            raise ConfigError(f"dataset.image_size must be at least 16, got {image_size}")
        if int(batch_size) < 1:
            raise ConfigError(f"dataset.batch_size must be at least 1, got {batch_size}")
        self.roots = [Path(r).expanduser() for r in ([root] if isinstance(root, (str, Path)) else root)]
        if not self.roots:
            raise ConfigError("dataset.root names no folder")
        self.root: Path | list[Path] = self.roots[0] if len(self.roots) == 1 else self.roots
        self.name = name
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers_setting = num_workers
        resolve_num_workers(num_workers)  # a bad value fails now, not at the first loader
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.split_seed = int(split_seed)
        self.split_groups = split_groups or None
        if train_split_size is not None and int(train_split_size) < 1:
            raise ConfigError(f"dataset.train_split_size must be at least 1 or null, got {train_split_size}")
        self.train_split_size = None if train_split_size is None else int(train_split_size)
        self.grouped_images = 0  # images that split_groups put in a group (the rest are one group each)
        self.cache = ImageCache(self.image_size, enabled=bool(cache))
        self.augment = dict(augment or {})
        self.synthetic = dict(synthetic) if synthetic else None
        if samples_per_epoch is not None and int(samples_per_epoch) < 1:
            raise ConfigError(f"dataset.samples_per_epoch must be at least 1 or null, got {samples_per_epoch}")
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.grayscale = bool(grayscale)
        self.on_error = on_error
        self.balance_sources = bool(balance_sources)
        self.source_of: dict[str, int] = {}  # image file -> index into self.source_names (several roots / sources)
        self.datasets: dict[str, Dataset] = {}
        self.split_files: dict[str, list[str]] = {}
        self.skipped: list[validation.Problem] = []

    def list_samples(self) -> tuple[dict[str, list[Any]], list[validation.Problem]]:
        """Every sample per split (no label budget, nothing decoded), and what the listing found wrong."""
        raise NotImplementedError

    def _select(self, per_split: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The samples this run uses of those listed (a label budget)."""
        return per_split

    def _load(self, sample: Any) -> np.ndarray:
        """Decode one sample into the cache; returns its (resized) image."""
        raise NotImplementedError

    def _make_dataset(self, samples: list[Any], transform: Any) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """List, then decode every sample up front (filling the cache): a bad file fails now, not at epoch 37."""
        if self.datasets:
            return
        per_split, problems = self.list_samples()
        per_split = self._select(per_split)
        problems += validation.inspect_samples(per_split, self._inspect)
        per_split, self.skipped = validation.apply_on_error(per_split, problems, self.on_error, self.root)
        train_tf, eval_tf = self.transform(train=True), self.transform(train=False)
        for split, samples in per_split.items():
            self.datasets[split] = self._make_dataset(samples, train_tf if split == "train" else eval_tf)
            self.split_files[split] = [str(validation.sample_file(sample)) for sample in samples]

    def _inspect(self, sample: Any) -> tuple[np.ndarray | None, list[readers.DataError]]:
        try:
            return self._load(sample), []
        except readers.DataError as error:
            return None, [error]

    def prepare_data(self) -> None:
        if self.synthetic:
            from defectseg.data import synthetic

            params = dict(self.synthetic)
            kind = params.pop("kind")
            ensure = {
                synthetic.CRACK_CLASSIFICATION: synthetic.ensure_crack_classification,
                synthetic.STEEL_SEGMENTATION: synthetic.ensure_steel_segmentation,
                synthetic.CRACK_SEGMENTATION: synthetic.ensure_crack_segmentation,
            }
            if kind not in ensure:
                raise ConfigError(f"dataset.synthetic.kind={kind!r} is not one of {sorted(ensure)}")
            ensure[kind](self.root, **params)

    def _split(self, labels: Sequence[int], paths: Sequence[Path]) -> dict[str, list[int]]:
        """The computed split: stratified by label, whole groups per split (``split_groups``), train capped
        (``train_split_size``)."""
        groups = group_keys(paths, self.split_groups, require_match=len(self.roots) == 1)
        if groups is not None:
            grouped = [key for key in groups if key.startswith("group:")]
            self.grouped_images += len(grouped)
            log.info(
                "dataset.split_groups=%r: %d of %d images in %d groups, the others one group each",
                self.split_groups,
                len(grouped),
                len(groups),
                len(set(grouped)),
            )
        splits = split_indices(labels, self.split_fractions, self.split_seed, groups)
        return cap_train_split(splits, self.train_split_size, self.split_seed, groups)

    @property
    def num_workers(self) -> int:
        """Per training process: under DDP the processes on one machine split its cores."""
        return resolve_num_workers(
            self.num_workers_setting, self.trainer.num_devices if self.trainer is not None else 1
        )

    def _pin_memory(self) -> bool:
        """Page-locked batches speed up host-to-GPU copies; without a GPU in use they only cost memory."""
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, split: str) -> DataLoader:
        return self._make_loader(self.datasets[split], train=split == "train")

    def _make_loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = None
        if train and self.balance_sources and len(self.source_names) > 1:
            sampler = self.balanced_sampler(dataset)
        elif train and self.samples_per_epoch:
            # A fixed epoch length whatever the label budget, so 10 and 100 labelled images get the same number of
            # steps.
            sampler = RandomSampler(dataset, replacement=True, num_samples=self.samples_per_epoch)
        workers = self.num_workers
        if workers == 0:
            # Augmentations draw from their own generator: seed it from the (seeded) torch RNG.
            seed_augmentations(dataset, int(torch.randint(2**31 - 1, ()).item()))
        return DataLoader(
            dataset,
            worker_init_fn=init_worker,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._pin_memory(),
            collate_fn=collate_in_numpy if workers == 0 else None,  # workers run single-threaded already
        )

    def balanced_sampler(self, dataset: Dataset) -> WeightedRandomSampler:
        """Every source drawn equally often (with replacement), however many images each holds: a set of 100
        photos beside one of 10000 would otherwise be a rounding error. Epoch length: samples_per_epoch or the set's
        size."""
        sources = self.sources_of(dataset)
        counts = np.bincount(sources, minlength=len(self.source_names)).astype(float)
        weights = 1.0 / counts[sources]
        return WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double),
            num_samples=self.samples_per_epoch or len(sources),
            replacement=True,
        )

    def sources_of(self, dataset: Dataset) -> np.ndarray:
        """The source index of each sample of one of this module's datasets."""
        samples = dataset.samples if hasattr(dataset, "samples") else dataset.pairs
        return np.asarray([self.source_of.get(str(validation.sample_file(sample)), 0) for sample in samples], dtype=int)

    @property
    def source_names(self) -> list[str]:
        names = [root.name for root in self.roots]
        return names if len(set(names)) == len(names) else [f"{i}_{name}" for i, name in enumerate(names)]

    def test_loaders_by_source(self) -> dict[str, DataLoader]:
        """One test loader per source, when there are several: stage-1 quality on each kind of photo."""
        test = self.datasets.get("test")
        if len(self.source_names) < 2 or not test:
            return {}
        sources = self.sources_of(test)
        return {
            name: self._make_loader(Subset(test, np.flatnonzero(sources == i).tolist()), train=False)
            for i, name in enumerate(self.source_names)
            if (sources == i).any()
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if len(self.datasets.get("test", ())) == 0:
            raise ConfigError(
                f"dataset {self.name!r} has no test images (dataset.split_fractions={list(self.split_fractions)}, or "
                "the set's own split has no test part)"
            )
        return self._loader("test")

    def calibration_dataset(self) -> Dataset:
        """The training images without augmentation (for statistics taken before training)."""
        view = copy.copy(self.datasets["train"])  # shares the file list and the cache
        view.transform = self.transform(train=False)
        return view

    def transform(self, train: bool) -> Any:
        return build_transform(
            self.image_size,
            train=train,
            augment=self.augment if train else None,
            grayscale=self.grayscale,
            label_maps=self.cache.label_maps,
        )

    def write_split(self, path: str | Path) -> None:
        """Record exactly which files went where (and which were skipped), so a run can be audited and repeated."""
        root = str(self.root) if len(self.roots) == 1 else [str(r) for r in self.roots]
        skipped = {"skipped": [{"file": p.sample, "problem": p.message} for p in self.skipped]} if self.skipped else {}
        atomic_write_json(
            path,
            {
                "root": root,
                "split_seed": self.split_seed,
                "split_groups": self.split_groups,
                **self.split_files,
                **skipped,
            },
        )

    def summary(self) -> dict[str, int]:
        counts = {f"{split}_images": len(dataset) for split, dataset in self.datasets.items()}
        if self.skipped:
            counts["skipped_images"] = len({p.sample for p in self.skipped})
        return counts


class ClassificationDataModule(_FolderDataModule):
    """Stage 1: ``root/<class>/*.png`` (``Positive/``, ``Negative/`` as in the Kaggle crack set)."""

    task = "classification"

    def __init__(self, *args: Any, classes: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classes = list(classes) if classes else None
        self.class_names: list[str] = []

    def list_samples(self) -> tuple[dict[str, list[Any]], list[validation.Problem]]:
        """Each root is split on its own (same fractions and seed), then the splits are joined: every source is in every
        split."""
        per_split: dict[str, list[tuple[Path, int]]] = {}
        self.source_of, self.grouped_images = {}, 0
        for source, root in enumerate(self.roots):
            for split, split_samples in self._scan_root(root).items():
                per_split.setdefault(split, []).extend(split_samples)
                self.source_of.update({str(path): source for path, _ in split_samples})
        if self.split_groups and not self.grouped_images:
            raise ConfigError(
                f"dataset.split_groups={self.split_groups!r} matches no file name in {[str(r) for r in self.roots]}"
            )
        return per_split, []

    def _load(self, sample: tuple[Path, int]) -> np.ndarray:
        return self.cache.image(sample[0])

    def _make_dataset(self, samples: list[Any], transform: Any) -> Dataset:
        return ClassificationDataset(samples, self.cache, transform)

    def _scan_root(self, root: Path) -> dict[str, list[tuple[Path, int]]]:
        folders = readers.find_split_folders(root)
        if folders:
            return {split: self._scan_classes(folder) for split, folder in folders.items()}
        samples = self._scan_classes(root)
        indices = self._split([label for _, label in samples], [path for path, _ in samples])
        return {split: [samples[i] for i in idx] for split, idx in indices.items()}

    def _scan_classes(self, folder: Path) -> list[tuple[Path, int]]:
        samples, names = readers.scan_classification_folder(folder, self.classes)
        if self.class_names and names != self.class_names:
            raise readers.DataError(
                f"{folder}: classes {names} differ from {self.class_names} in the other folders (splits or roots)"
            )
        self.class_names = names
        return samples

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationDataModule(_FolderDataModule):
    """Stage 2: ``root/images/x.png`` + ``root/masks/x.png`` (or ``train/ val/ test/`` each holding both),
    or any other ``layout`` (``defectseg.data.layouts``: mask beside the image, Pascal VOC, Severstal CSV)."""

    task = "segmentation"

    def __init__(
        self,
        *args: Any,
        layout: Layout | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = "",
        max_train_images: int | None = None,
        classes: Sequence[str] | None = None,
        multilabel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if layout is not None and (image_dir, mask_dir, mask_suffix) != ("images", "masks", ""):
            raise ConfigError(
                "dataset.image_dir / mask_dir / mask_suffix describe the images/ + masks/ layout; "
                "with dataset.layout set, use its own options (dataset.layout.*)"
            )
        self.labels = ClassSpec.from_config(classes, multilabel)
        if layout is None and self.synthetic and self.labels is not None:
            layout = self._synthetic_class_layout(image_dir, mask_suffix)
        self.layout = layout or FolderLayout(image_dir, mask_dir, mask_suffix)
        self.layout.bind(self.labels)
        self.cache.label_maps = self.layout.values.label_maps
        self.max_train_images = None if max_train_images is None else int(max_train_images)

    def _synthetic_class_layout(self, image_dir: str, mask_suffix: str) -> Layout:
        """The embedded steel set labels each defect by kind in labels/ (class indices) beside its binary masks/."""
        from defectseg.data.synthetic import SYNTHETIC_CLASSES

        if list(self.labels.names) != list(SYNTHETIC_CLASSES):
            raise ConfigError(
                f"dataset.classes={list(self.labels.names)}: the embedded steel set paints the classes "
                f"{list(SYNTHETIC_CLASSES)} (in this order); declare those, or dataset.classes=null for binary"
            )
        return FolderLayout(image_dir, "labels", mask_suffix, mask_values="classes")

    @property
    def class_names(self) -> list[str] | None:
        return None if self.labels is None else list(self.labels.names)

    def class_statistics(self, split: str = "train") -> dict[str, Any]:
        """Pixels and images per class in one split (after setup), from the cached label maps."""
        if self.labels is None:
            raise ConfigError("class statistics need dataset.classes")
        dataset = self.datasets[split]
        maps = (self.cache.pair(*sample)[1] for sample in dataset.pairs)
        pixels, images, background = class_pixel_counts(maps, self.labels)
        return {
            "pixels": dict(zip(self.labels.names, pixels)),
            "images": dict(zip(self.labels.names, images)),
            "background_pixels": background,
        }

    def list_samples(self) -> tuple[dict[str, list[Any]], list[validation.Problem]]:
        """Several roots (same layout): each split on its own, then joined, as for classification."""
        self.grouped_images, self.source_of = 0, {}
        per_split: dict[str, list[Any]] = {}
        problems: list[validation.Problem] = []
        for source, root in enumerate(self.roots):
            scan = self.layout.scan(root)
            indices = (
                scan.splits
                if scan.splits is not None
                else self._split([0] * len(scan.samples), [image for image, _ in scan.samples])
            )
            if "train" not in indices:
                raise readers.DataError(f"{root}: the set's own split has no train part")
            for split, idx in indices.items():
                per_split.setdefault(split, []).extend(scan.samples[i] for i in idx)
                self.source_of.update({str(scan.samples[i][0]): source for i in idx})
            problems += scan.problems
        return per_split, problems

    def _select(self, per_split: dict[str, list[Any]]) -> dict[str, list[Any]]:
        train = per_split["train"]
        return {
            **per_split,
            "train": [train[i] for i in subset_for_budget(range(len(train)), self.max_train_images, self.split_seed)],
        }

    def _load(self, sample: Sample) -> np.ndarray:
        return self.cache.pair(*sample)[0]

    def _make_dataset(self, samples: list[Any], transform: Any) -> Dataset:
        return SegmentationDataset(samples, self.cache, transform)


class UnlabelledImageDataModule(_FolderDataModule):
    """Photos without labels (self-supervised stage 1) from several sources of any layout; never reads a mask.

    ``sources``: name -> ``{dataset: <a dataset config or DataModule>, splits: [train]}`` (or a list of
    such entries, named by their data set). Each source lists its samples exactly as its own stage would
    (same split_seed, split_fractions, train_split_size), and only the images of ``splits`` are kept:
    with ``[train]`` (the default), a stage-2 target set's val and test photos never take part. The pooled
    images of each source are then split again by this module's ``split_fractions`` (reconstruction train /
    val). ``synthetic``: not generated here; the embedded configs use it to size their synthetic sources.
    """

    task = "unlabelled"

    def __init__(
        self,
        sources: Mapping[str, Any] | Sequence[Any],
        name: str = "unlabelled",
        synthetic: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from hydra.utils import instantiate

        entries = list(sources.items()) if isinstance(sources, Mapping) else [(None, entry) for entry in sources]
        if not entries:
            raise ConfigError("dataset.sources names no source")
        self.sources: list[tuple[str, _FolderDataModule, tuple[str, ...]]] = []
        for key, entry in entries:
            where = f"dataset.sources.{key}" if key is not None else f"dataset.sources[{len(self.sources)}]"
            if not isinstance(entry, Mapping) or entry.get("dataset") is None:
                raise ConfigError(
                    f"{where}: must hold dataset: (a dataset config) and optionally splits: [train, ...], got {entry!r}"
                )
            module = entry["dataset"]
            if isinstance(module, Mapping):
                module = instantiate(module)
            if not isinstance(module, _FolderDataModule):
                raise ConfigError(
                    f"{where}.dataset: expected a dataset config (a DataModule of defectseg.data.datamodules), got "
                    f"{type(module).__name__}"
                )
            splits = tuple(entry.get("splits") or ("train",))
            unknown = sorted(set(splits) - {"train", "val", "test"})
            if unknown:
                raise ConfigError(f"{where}.splits: {unknown} are not splits (train, val, test)")
            self.sources.append((str(key if key is not None else module.name), module, splits))
        super().__init__(
            root=[
                str(module.root) if len(module.roots) == 1 else str(module.roots[0]) for _, module, _ in self.sources
            ],
            name=name,
            **kwargs,
        )

    @classmethod
    def of(cls, datamodule: _FolderDataModule) -> UnlabelledImageDataModule:
        """Any data set as one unlabelled source: its train split's images, with its image size, batches and
        augmentation."""
        return cls(
            sources={datamodule.name: {"dataset": datamodule, "splits": ["train"]}},
            name=datamodule.name,
            image_size=datamodule.image_size,
            batch_size=datamodule.batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers_setting,
            split_fractions=(0.9, 0.1, 0.0),
            split_seed=datamodule.split_seed,
            cache=datamodule.cache.enabled,
            augment=datamodule.augment,
            samples_per_epoch=datamodule.samples_per_epoch,
            grayscale=datamodule.grayscale,
            on_error=datamodule.on_error,
        )

    @property
    def source_names(self) -> list[str]:
        return [name for name, _, _ in self.sources]

    def prepare_data(self) -> None:
        for _, module, _ in self.sources:
            module.prepare_data()

    def list_samples(self) -> tuple[dict[str, list[Any]], list[validation.Problem]]:
        """Images of each source's chosen splits (listed, never decoded by the source), split again here; label = source
        index."""
        per_split: dict[str, list[tuple[Path, int]]] = {}
        self.source_of, self.grouped_images = {}, 0
        for index, (name, module, splits) in enumerate(self.sources):
            listed, _ = module.list_samples()  # the source's own problems (a missing mask...) do not concern its images
            images = sorted({validation.sample_file(sample) for split in splits for sample in listed.get(split, ())})
            if not images:
                raise readers.DataError(
                    f"dataset.sources.{name}: no images in its {'/'.join(splits)} split(s) ({module.root})"
                )
            for split, idx in split_indices([0] * len(images), self.split_fractions, self.split_seed).items():
                per_split.setdefault(split, []).extend((images[i], index) for i in idx)
            self.source_of.update({str(path): index for path in images})
        return per_split, []

    def _load(self, sample: tuple[Path, int]) -> np.ndarray:
        return self.cache.image(sample[0])

    def _make_dataset(self, samples: list[Any], transform: Any) -> Dataset:
        return ClassificationDataset(samples, self.cache, transform)  # "label": the source index

    def write_split(self, path: str | Path) -> None:
        super().write_split(path)
        split = read_split_file(path)
        split["sources"] = {
            name: {"root": str(module.root), "splits": list(splits)} for name, module, splits in self.sources
        }
        atomic_write_json(path, split)


def read_split_file(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
