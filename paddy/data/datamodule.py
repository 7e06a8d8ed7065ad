"""The LightningDataModule: source -> validation -> split -> transforms -> loaders.

:meth:`ImageDataModule.setup` does all the work that can fail (indexing, verifying every image,
splitting), so a bad dataset stops a run before a model is built. The per-sample path is
``reader(i) -> HxWx3 uint8 RGB -> albumentations -> CHW float tensor``; a decoded-image cache can
wrap the reader and device-side augmentation can hook ``on_after_batch_transfer`` without changing
this class's constructor or the loaders' batch format ``(images, labels)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from paddy.data.errors import DataProblem, DataValidationError, summarize_problems
from paddy.data.sources import SPLITS, ImageSource, SourceIndex
from paddy.data.splits import stratified_split, stratified_subset
from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from paddy.data.validation import default_cache_dir, validate_image_files

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


class ImageDataset(Dataset):
    """Samples of one split, read through the index's reader.

    A sample is ``(image tensor, label)``; with ``features`` (name -> extractor of the decoded,
    un-augmented image, e.g. DCT coefficients) it is ``({"images": tensor, name: tensor, ...}, label)``
    and the model is called as ``model(**inputs)``.
    """

    def __init__(self, index: SourceIndex, transform: Callable | None,
                 features: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None):
        self.reader = index.reader
        self.labels = index.labels
        self.items = index.items
        self.transform = transform
        self.features = dict(features or {})

    def __len__(self) -> int:
        return len(self.labels)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation pipeline (albumentations draws from its own generators, which
        ``seed_everything`` does not reach; unseeded, every run would augment differently)."""
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(seed) % 2**32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | dict[str, torch.Tensor], int]:
        image = self.reader(i)
        extras = {name: torch.from_numpy(extract(image)) for name, extract in self.features.items()}
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        if extras:
            return {"images": image, **extras}, int(self.labels[i])
        return image, int(self.labels[i])


class EpochSeededSampler(Sampler[int]):
    """Shuffles ``n`` indices with a permutation drawn from ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before every epoch, so epoch ``k`` sees the same order whether
    the run went straight through or was resumed from a checkpoint (a global RNG would differ).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class ImageDataModule(LightningDataModule):
    """Train/val/test loaders for any :class:`~paddy.data.sources.ImageSource`.

    Args:
        source: an ``ImageSource``, or a callable ``root -> ImageSource`` (a class or a partial, as
            Hydra's ``_partial_: true`` gives), called with ``root``.
        root: the dataset folder (``data.root``).
        image_size: side of the square training image; used by the transform presets.
        val_fraction, test_fraction: fractions carved (stratified, seeded) from the training data
            where the layout does not define that split itself (a layout with its own splits but
            no test split gets no test set carved from its training data).
        train_limit, valid_limit, test_limit: optional sample caps (stratified), for quick runs.
        on_bad_image: ``error`` stops with one message naming the problems; ``skip`` drops the bad
            samples and warns with their names.
        transforms: ``{"train": spec, "eval": spec}``, see :mod:`paddy.data.transforms`.
        cache_dir: where the image-verification cache lives (default ``~/.cache/paddy``);
            ``False`` disables it.
    """

    def __init__(
        self,
        source: ImageSource | Callable[[str | None], ImageSource],
        root: str | Path | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        train_limit: int | None = None,
        valid_limit: int | None = None,
        test_limit: int | None = None,
        on_bad_image: str = "error",
        transforms: Mapping[str, Mapping | None] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        cache_dir: str | Path | bool | None = None,
    ):
        super().__init__()
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"data.on_bad_image={on_bad_image!r} (expected one of: {', '.join(BAD_IMAGE_POLICIES)})")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"data.{name}={value} (expected 0 <= value < 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} "
                             f"leaves no training data (expected < 1)")
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"data.{name}={value} (expected a positive integer)")
        for name, value in (("train_limit", train_limit), ("valid_limit", valid_limit), ("test_limit", test_limit)):
            if value is not None and int(value) < 1:
                raise ValueError(f"data.{name}={value} (expected a positive integer or null)")
        self.source = source if isinstance(source, ImageSource) else source(root)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.limits = {"train": train_limit, "val": valid_limit, "test": test_limit}
        self.on_bad_image = on_bad_image
        self.mean, self.std = tuple(mean), tuple(std)
        transforms = dict(transforms or {})
        self.train_transform = build_transform(transforms.get("train"), mean, std)
        self.eval_transform = build_transform(transforms.get("eval"), mean, std)
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.features: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        # The training order per epoch: from the run's seed (set by the pipeline) or split_seed.
        self.shuffle_seed = int(split_seed)
        self.index: SourceIndex | None = None
        self.split_indices: dict[str, SourceIndex] = {}
        self.skipped: list[DataProblem] = []

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Index, verify and split the dataset (once; later calls are no-ops)."""
        if self.index is not None:
            return
        index = self.source.load()
        if len(index) == 0 and not index.problems:
            raise DataValidationError([DataProblem("empty_class", str(self.source.root), "no images found")],
                                      self._where())
        index = self._check(index)
        self.index = index
        self.split_indices = self._split(index)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.split_indices.items())
        log.info("data=%s: %d classes; %s", index.name, len(index.classes), sizes)

    def _where(self) -> str:
        root = getattr(self.source, "root", None)
        return f"data={self.source.name}" + (f" (data.root={root})" if root else "")

    def _check(self, index: SourceIndex) -> SourceIndex:
        """Apply ``on_bad_image`` to everything wrong with the dataset."""
        problems = list(index.problems)
        if index.files is not None:
            problems += validate_image_files(
                index.files, index.items, cache_dir=self.cache_dir,
                cache_key=f"{index.name}:{os.path.abspath(self.source.root or '')}",
            )
        bad_items = {p.where for p in problems if p.kind in ("missing_file", "unreadable_image")}
        keep = np.array([i for i, item in enumerate(index.items) if item not in bad_items], dtype=np.int64)
        present = set(index.labels[keep].tolist())
        problems += [DataProblem("empty_class", f"class {name!r}", "no usable images")
                     for c, name in enumerate(index.classes)
                     if c not in present and not any(p.kind == "empty_class" and name in p.where for p in problems)]
        if not problems:
            return index
        if self.on_bad_image == "error":
            raise DataValidationError(problems, self._where())
        if len(keep) == 0:
            raise DataValidationError(problems, self._where() + " (nothing left after skipping)")
        log.warning("%s\nSkipping them (data.on_bad_image=skip).", summarize_problems(problems, self._where()))
        self.skipped = problems
        index = index.subset(keep)
        index.problems = []
        return index

    def _split(self, index: SourceIndex) -> dict[str, SourceIndex]:
        """Train/val/test: the layout's own splits where it has them, stratified fractions elsewhere."""
        given = index.splits if index.splits is not None else np.full(len(index), "train")
        positions = {split: np.flatnonzero(given == split) for split in SPLITS}
        train = positions["train"]
        carve = {}
        if len(positions["val"]) == 0 and self.val_fraction > 0:
            carve["val"] = self.val_fraction
        # A layout that defines its own splits but no test/ split is taken at its word: no test set.
        if index.splits is None and self.test_fraction > 0:
            carve["test"] = self.test_fraction
        if carve:
            parts = stratified_split(index.labels[train], carve, self.split_seed)
            for name in carve:
                positions[name] = train[parts[name]]
            positions["train"] = train[parts["rest"]]
        if len(positions["train"]) == 0:
            raise DataValidationError([DataProblem("empty_class", self._where(), "no training images")],
                                      self._where())
        result = {}
        for split in SPLITS:
            chosen = positions[split]
            if len(chosen) == 0:
                continue
            limit = self.limits[split]
            if limit is not None:
                chosen = chosen[stratified_subset(index.labels[chosen], int(limit), self.split_seed)]
            result[split] = index.subset(chosen)
        return result

    # ------------------------------------------------------------------ info

    @property
    def classes(self) -> list[str]:
        if self.index is None:
            raise RuntimeError("call setup() before asking for the classes")
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def has_split(self, split: str) -> bool:
        return split in self.split_indices

    # ------------------------------------------------------------------ loaders

    def request_features(self, names: tuple[str, ...] | list[str], options: Mapping | None = None) -> None:
        """Compute these per-sample features (see :mod:`paddy.data.features`) for the model.

        ``options[name]`` are the extractor's arguments (e.g. ``model.dct = {block: 32, size: 64}``).
        """
        from paddy.data.features import FEATURE_EXTRACTORS

        self.features = {}
        for name in names:
            if name not in FEATURE_EXTRACTORS:
                raise ValueError(f"the model asks for unknown input feature {name!r} "
                                 f"(available: {', '.join(FEATURE_EXTRACTORS)})")
            kwargs = {k: v for k, v in dict((options or {}).get(name) or {}).items()
                      if k in ("block", "size", "normalize")}
            self.features[name] = FEATURE_EXTRACTORS[name](**kwargs)

    def dataset(self, split: str) -> ImageDataset:
        if split not in self.split_indices:
            raise ValueError(f"{self._where()} has no {split} split (it has: {', '.join(self.split_indices)})")
        transform = self.train_transform if split == "train" else self.eval_transform
        dataset = ImageDataset(self.split_indices[split], transform, self.features)
        dataset.reseed(self.shuffle_seed)
        return dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        batch = self.batch_size if split == "train" else self.eval_batch_size
        sampler = EpochSeededSampler(len(dataset), self.shuffle_seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=batch, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
            drop_last=shuffle and len(dataset) > batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation, NumPy and Python seeds, derived from the
    loader's base seed (drawn from the seeded torch generator), so runs repeat and workers differ."""
    import random

    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if isinstance(info.dataset, ImageDataset):
        info.dataset.reseed(seed)


def default_num_workers() -> int:
    """Loader processes: the cores this process may use, less one for the training loop, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))
