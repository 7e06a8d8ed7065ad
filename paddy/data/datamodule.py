"""The LightningDataModule: source -> validation -> split -> transforms -> loaders.

:meth:`ImageDataModule.setup` does all the work that can fail (indexing, verifying every image,
splitting), so a bad dataset stops a run before a model is built. The per-sample path is
``reader(i) -> HxWx3 uint8 RGB -> albumentations -> CHW float tensor``.

Two switches make that path fast enough for a big GPU (see :mod:`paddy.data.cache` and
:mod:`paddy.data.gpu_augment`):

- ``cache``: the reader reads decoded, slightly shrunk pixels from a memory-mapped file instead of
  decoding the image file every epoch (filled by the verification pass, which decodes every file
  anyway);
- ``gpu_augment``: the training loader ships ``uint8`` pixels and the training augmentation runs on
  whole batches after they reached the device (``on_after_batch_transfer``).

And wherever a JPEG is decoded only to be shrunk (``scaled_decode``), it is decoded at 1/2, 1/4 or 1/8
of its size if that still leaves the shorter side the next step needs: the cache's ``cache_size``, or
for the plain loader the largest size the transforms resize or crop to (at least ``image_size``).

Either way the loaders' batches reach the model as ``(images, labels)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from paddy.data.cache import DecodedImageCache, default_short_side, estimated_bytes, parse_cache_mode
from paddy.data.errors import DataProblem, DataSourceError, DataValidationError, summarize_problems
from paddy.data.gpu_augment import BatchAugment, parse_gpu_augment, unsupported_steps
from paddy.data.sources import SPLITS, FileReader, ImageSource, SourceIndex
from paddy.data.splits import stratified_folds, stratified_split, stratified_subset
from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform, decode_side
from paddy.data.validation import default_cache_dir, validate_image_files
from paddy.errors import SettingError
from paddy.model_inputs import feature_extractors, features_of
from paddy.settings import (
    MAX_IMAGE_SIZE,
    SAMPLERS,
    check_folds,
    one_of,
    optional_positive_int,
    positive_int,
    split_fractions,
)
from paddy.utils.runtime import available_cores, derived_seed

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
RAW_KEY, RAW_SIZES_KEY = "raw_pixels", "raw_sizes"


def collate_raw(samples: list[tuple[dict[str, torch.Tensor], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Batch raw ``H x W x 3`` uint8 images of any sizes: padded at the bottom/right to the largest
    (repeating the last row and column, so resampling at the border sees no foreign pixels), with
    each image's real ``(height, width)`` under :data:`RAW_SIZES_KEY`."""
    images = [inputs[RAW_KEY] for inputs, _ in samples]
    height, width = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    if all(im.shape[:2] == (height, width) for im in images):
        batch = torch.stack(images)
    else:
        batch = torch.empty((len(images), height, width, 3), dtype=torch.uint8)
        for k, im in enumerate(images):
            h, w = im.shape[:2]
            batch[k, :h, :w] = im
            batch[k, :h, w:] = im[:, -1:]
            batch[k, h:] = batch[k, h - 1 : h]
    out = {RAW_KEY: batch, RAW_SIZES_KEY: torch.tensor([im.shape[:2] for im in images], dtype=torch.int32)}
    for key in samples[0][0]:
        if key != RAW_KEY:
            out[key] = torch.stack([inputs[key] for inputs, _ in samples])
    return out, torch.tensor([label for _, label in samples], dtype=torch.int64)


class ImageDataset(Dataset):
    """Samples of one split, read through the index's reader.

    A sample is ``(image tensor, label)``; with ``features`` (name -> extractor of the decoded,
    un-augmented image, e.g. DCT coefficients) it is ``({"images": tensor, name: tensor, ...}, label)``
    and the model is called as ``model(**inputs)``.

    The augmentation of a sample is a function of (``seed``, epoch, sample index) alone: the key is
    ``i`` or ``(epoch, i)`` (what :class:`EpochSeededSampler` yields), and the pipeline is seeded
    with :func:`~paddy.utils.runtime.derived_seed` of those three before each sample. So neither the
    number of loader workers, nor the world size, nor resuming a killed run changes which augmentation
    an image gets in an epoch.
    """

    def __init__(self, index: SourceIndex, transform: Callable | None,
                 features: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None, seed: int = 0):
        self.reader = index.reader
        self.labels = index.labels
        self.items = index.items
        self.transform = transform
        self.features = dict(features or {})
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def reseed(self, seed: int) -> None:
        """The run seed the per-sample augmentation seeds derive from."""
        self.seed = int(seed)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | dict[str, torch.Tensor], int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        image = self.reader(i)
        if hasattr(self.transform, "set_random_seed"):
            # albumentations draws from its own generators, which seed_everything does not reach.
            self.transform.set_random_seed(derived_seed(self.seed, epoch, i))
        extras = features_of(image, self.features)
        if self.transform is None:
            # Raw pixels for device-side augmentation (see collate_raw).
            return {RAW_KEY: torch.from_numpy(np.ascontiguousarray(image)), **extras}, int(self.labels[i])
        image = self.transform(image=image)["image"]
        if extras:
            return {"images": image, **extras}, int(self.labels[i])
        return image, int(self.labels[i])


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Shuffles ``n`` indices with a permutation drawn from ``seed + epoch``; yields ``(epoch, index)``.
    With ``weights`` (one per index) it draws ``n`` indices with replacement in proportion to them
    instead (``data.sampler=balanced``: ``1 / images of the class``, so every class is drawn alike).

    Lightning calls :meth:`set_epoch` before every epoch, so epoch ``k`` sees the same order whether
    the run went straight through or was resumed from a checkpoint (a global RNG would differ). Under
    DDP each of ``world_size`` processes takes every ``world_size``-th index of the same permutation
    from its ``rank`` on (the tail that does not divide evenly is left out of that epoch, so every
    process runs the same number of steps).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, weights: Sequence[float] | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.world_size = rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, len(self) * self.world_size, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.n, generator=generator)[: len(self) * self.world_size]
        return iter((self.epoch, i) for i in order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


class ShardSampler(Sampler[int]):
    """Evaluation under DDP: process ``rank`` of ``world_size`` takes indices ``rank, rank + world_size, ...``,
    so every image of the split is evaluated exactly once (no padding: the metrics, synchronised across
    processes at the epoch's end, count each image once, whatever the world size)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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
        cache_dir: where the image-verification cache and the decoded-image cache live (default
            ``~/.cache/paddy``); ``False`` disables both.
        cache: decoded-image cache (:mod:`paddy.data.cache`) for datasets of image files:
            ``memmap`` (on), ``none`` (off), ``auto`` (on when the disk under ``cache_dir`` has room
            for it with 20% to spare).
        cache_size: the cached images' shorter side (default ``ceil(image_size / 0.875)``).
        scaled_decode: decode a JPEG at 1/2, 1/4 or 1/8 of its size where that still gives the shorter
            side the next step needs (the cache's ``cache_size``; without the cache the largest size the
            transforms resize or crop to, at least ``image_size``): several times faster on big
            photos, pixels about 1 in 255 away from a full decode; verification is as strict.
        n_folds, fold: stratified k-fold cross-validation: the test split is set aside as without it,
            the rest is dealt into ``n_folds`` stratified folds (``split_seed``), and fold ``fold``
            is the validation split (``val_fraction`` is not used); None: no folds.
        sampler: the training order: ``shuffle`` (every image once per epoch) or ``balanced``
            (class-balanced draws with replacement, as many as the split has images); both seeded
            by the epoch, so a resumed run sees the same batches, and sharded alike under DDP.
        gpu_augment: run the training augmentation on whole batches on the training device
            (:mod:`paddy.data.gpu_augment`): ``true``, ``false``, or ``auto`` (on when training on a
            CUDA GPU and every training transform can run there).
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
        cache: str | bool | None = "auto",
        cache_size: int | None = None,
        scaled_decode: bool = True,
        gpu_augment: str | bool | None = "auto",
        sampler: str = "shuffle",
        n_folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__()
        self.sampler = one_of("data.sampler", sampler, SAMPLERS)
        self.n_folds, self.fold = check_folds(n_folds, fold)
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise SettingError(f"data.on_bad_image={on_bad_image!r} (expected one of: {', '.join(BAD_IMAGE_POLICIES)})")
        val_fraction, test_fraction = split_fractions(val_fraction, test_fraction)
        for name, value in (("train_limit", train_limit), ("valid_limit", valid_limit), ("test_limit", test_limit)):
            optional_positive_int(f"data.{name}", value)
        self.source = source if isinstance(source, ImageSource) else source(root)
        self.image_size = positive_int("data.image_size", image_size, MAX_IMAGE_SIZE)
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.eval_batch_size = optional_positive_int("data.eval_batch_size", eval_batch_size) or self.batch_size
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.limits = {"train": train_limit, "val": valid_limit, "test": test_limit}
        self.on_bad_image = on_bad_image
        self.mean, self.std = tuple(mean), tuple(std)
        transforms = dict(transforms or {})
        self._specs = [transforms.get("train"), transforms.get("eval")]
        self.train_transform, self.eval_transform = (build_transform(spec, mean, std) for spec in self._specs)
        self._set_up_cache(cache_dir, cache, cache_size)
        self.scaled_decode = bool(scaled_decode)
        # What the plain loader's transforms need of a decoded image (the cache has its own size).
        self.decode_side = decode_side(self.image_size, self._specs)
        self._set_up_gpu_augment(gpu_augment, transforms.get("train"))
        self.features: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        # The training order per epoch: from the run's seed (set by the pipeline) or split_seed.
        self.shuffle_seed = int(split_seed)
        self.index: SourceIndex | None = None
        self.split_indices: dict[str, SourceIndex] = {}
        self.skipped: list[DataProblem] = []

    def _set_up_cache(self, cache_dir: str | Path | bool | None, cache: str | bool | None,
                      cache_size: int | None) -> None:
        """Where the caches live (``cache_dir``; None: off), the decoded-image cache mode and its image side."""
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_mode = parse_cache_mode(cache)
        cache_size = optional_positive_int("data.cache_size", cache_size)
        self.cache_size = cache_size if cache_size is not None else default_short_side(self.image_size)
        self.cache: DecodedImageCache | None = None

    def _set_up_gpu_augment(self, gpu_augment: str | bool | None, train_spec: Mapping | None) -> None:
        """The device-side augmentation mode; ``true`` fails now if :class:`BatchAugment` cannot run the spec."""
        self.gpu_augment_mode = parse_gpu_augment(gpu_augment)
        self.train_spec = train_spec
        if self.gpu_augment_mode == "true":
            BatchAugment(self.train_spec or {}, self.mean, self.std)
        self._augment: BatchAugment | None = None
        self._augment_state: tuple[int, torch.Generator, random.Random] | None = None

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
        if self.cache is None and self.scaled_decode and isinstance(index.reader, FileReader):
            index.reader = FileReader(index.reader.paths, self.decode_side)
        self.index = index
        self.split_indices = self._split(index)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.split_indices.items())
        log.info("data=%s: %d classes; %s", index.name, len(index.classes), sizes)
        for split, counts in self.class_counts().items():
            log.info("images per class, %s: %s", split, ", ".join(f"{name} {n}" for name, n in counts.items()))

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: ``{"train": {"normal": 1764, ...}, "val": {...}, ...}``."""
        return {split: dict(zip(self.classes, np.bincount(part.labels, minlength=len(self.classes)).tolist()))
                for split, part in self.split_indices.items()}

    def _where(self) -> str:
        root = getattr(self.source, "root", None)
        return f"data={self.source.name}" + (f" (data.root={root})" if root else "")

    def _check(self, index: SourceIndex) -> SourceIndex:
        """Apply ``on_bad_image`` to everything wrong with the dataset."""
        problems = list(index.problems)
        cache = self._open_cache(index)
        with cache.exclusive() if cache is not None else contextlib.nullcontext():
            cached_before = cache is not None and cache.has(None)
            started = time.perf_counter()
            if index.files is not None:
                problems += validate_image_files(
                    index.files, index.items, cache_dir=self.cache_dir,
                    cache_key=f"{index.name}:{os.path.abspath(self.source.root or '')}",
                    on_image=cache.store if cache is not None else None,
                    # Without a cache only the verdict is kept: the smallest scale is checked as strictly.
                    min_side=cache.decode_side if cache is not None else (1 if self.scaled_decode else None),
                )
            bad_items = {p.where for p in problems if p.kind in ("missing_file", "unreadable_image")}
            keep = np.array([i for i, item in enumerate(index.items) if item not in bad_items], dtype=np.int64)
            if cache is not None:
                self._fill_cache(cache, index, keep, started, cached_before)
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

    def _open_cache(self, index: SourceIndex) -> DecodedImageCache | None:
        """The decoded-image cache for this dataset, or None (off, in-memory data, no disk room)."""
        if self.cache_mode == "none" or index.files is None or not index.files:
            return None
        if self.cache_dir is None:
            if self.cache_mode == "memmap":
                log.warning("data.cache=memmap needs data.cache_dir (it is off): decoding the image files instead")
            return None
        cache = DecodedImageCache(self.cache_dir, index.files, self.cache_size,
                                  dataset_id=f"{index.name}:{os.path.abspath(self.source.root or '')}",
                                  scaled_decode=self.scaled_decode)
        if self.cache_mode == "auto" and not cache.complete:
            needed = estimated_bytes([index.files[i] for i in cache.missing()], self.cache_size)
            probe = self.cache_dir
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            free = shutil.disk_usage(probe).free
            if needed * 1.2 > free:
                log.warning("data.cache=auto: the decoded-image cache needs about %.1f GB and %s has %.1f GB free: "
                            "decoding the image files every epoch instead", needed / 1e9, probe, free / 1e9)
                return None
        return cache

    def _fill_cache(self, cache: DecodedImageCache, index: SourceIndex, keep: np.ndarray, started: float,
                    already: bool) -> None:
        """Store what verification did not decode (files it knew from an earlier run), then read from the cache."""
        cache.fill([int(i) for i in keep], on_error=lambda i, error: None)
        cache.finish(keep)
        if not cache.has(keep):  # a file changed between verification and caching: read the files
            log.warning("decoded-image cache %s is incomplete: decoding the image files instead", cache.directory)
            return
        self.cache = cache
        index.reader = cache.reader()
        if already:
            log.info("decoded-image cache: %d images at %d px from %s", len(keep), self.cache_size, cache.directory)
        else:
            log.info("decoded-image cache: stored %d images at %d px (%.2f GB) in %.1f s in %s", len(keep),
                     self.cache_size, cache.stored_bytes / 1e9, time.perf_counter() - started, cache.directory)

    def _fold_positions(self, index: SourceIndex, positions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``data.n_folds``: the test split set aside first (the layout's, or ``test_fraction`` of the
        data), then the rest (the pool) in stratified folds; fold ``data.fold`` validates, the others train."""
        pool = np.sort(np.concatenate([positions["train"], positions["val"]]))
        test = positions["test"]
        if index.splits is None and self.test_fraction > 0:
            parts = stratified_split(index.labels[pool], {"test": self.test_fraction}, self.split_seed)
            test, pool = pool[parts["test"]], pool[parts["rest"]]
        counts = np.bincount(index.labels[pool], minlength=len(index.classes))
        if counts.min() < self.n_folds:
            fewest = int(counts.min())
            advice = f"use data.n_folds<={fewest}" if fewest >= 2 else "k-fold needs 2 or more images of every class"
            raise DataSourceError(f"data.n_folds={self.n_folds} is more than the {fewest} training-pool images of "
                                  f"class {index.classes[int(counts.argmin())]!r} in {self._where()}: every fold must "
                                  f"validate every class; {advice}")
        fold_of = stratified_folds(index.labels[pool], self.n_folds, self.split_seed)
        return {"train": pool[fold_of != self.fold], "val": pool[fold_of == self.fold], "test": test}

    def _split(self, index: SourceIndex) -> dict[str, SourceIndex]:
        """Train/val/test: the layout's own splits where it has them, stratified fractions elsewhere."""
        given = index.splits if index.splits is not None else np.full(len(index), "train")
        positions = {split: np.flatnonzero(given == split) for split in SPLITS}
        if self.n_folds:
            positions = self._fold_positions(index, positions)
        train = positions["train"]
        carve = {}
        if len(positions["val"]) == 0 and self.val_fraction > 0 and not self.n_folds:
            carve["val"] = self.val_fraction
        # A layout that defines its own splits but no test/ split is taken at its word: no test set.
        if index.splits is None and self.test_fraction > 0 and not self.n_folds:
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
        self.features = feature_extractors(names, options)
        # The plain loader's decode size covers the features too (a DCT of another size, or of the whole image).
        self.decode_side = decode_side(self.image_size, self._specs, self.features)
        if self.cache is None and self.scaled_decode:
            for part in [self.index, *self.split_indices.values()]:
                if part is not None and isinstance(part.reader, FileReader):
                    part.reader.min_side = self.decode_side

    def dataset(self, split: str, raw: bool = False) -> ImageDataset:
        """Split ``split``'s dataset; ``raw``: un-augmented uint8 pixels for device-side augmentation."""
        if split not in self.split_indices:
            raise ValueError(f"{self._where()} has no {split} split (it has: {', '.join(self.split_indices)})")
        transform = None if raw else self.train_transform if split == "train" else self.eval_transform
        return ImageDataset(self.split_indices[split], transform, self.features, seed=self.shuffle_seed)

    def _loader(self, split: str, shuffle: bool, raw: bool = False) -> DataLoader:
        dataset = self.dataset(split, raw=raw)
        batch = self.batch_size if split == "train" else self.eval_batch_size
        rank, world = self._process_slot()
        if shuffle:
            sampler: Sampler = EpochSeededSampler(len(dataset), self.shuffle_seed, rank, world,
                                                  self._balanced_weights(split))
        else:
            sampler = ShardSampler(len(dataset), rank, world)
        return DataLoader(
            dataset, batch_size=batch, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
            drop_last=shuffle and len(sampler) > batch, collate_fn=collate_raw if raw else None,
            # Its own generator for the workers' base seed: drawing it from the global one would make
            # dropout and Mixup depend on how often a loader was iterated (0 vs N workers, resume).
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def _balanced_weights(self, split: str) -> np.ndarray | None:
        """``data.sampler=balanced``: each image drawn with weight 1 / (images of its class)."""
        if self.sampler != "balanced":
            return None
        labels = self.split_indices[split].labels
        return 1.0 / np.bincount(labels, minlength=len(self.classes))[labels]

    def _process_slot(self) -> tuple[int, int]:
        """(global rank, world size) of this process in the attached trainer; (0, 1) without one.
        paddy's samplers shard the data themselves (the pipeline turns Lightning's off)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def uses_gpu_augment(self, device: torch.device | str | None = None) -> bool:
        """Whether the training loader hands raw pixels to :class:`BatchAugment` on ``device``
        (default: the attached trainer's device)."""
        if self.gpu_augment_mode == "false":
            return False
        if self.gpu_augment_mode == "true":
            return True
        if device is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        return torch.device(device).type == "cuda" and not unsupported_steps(self.train_spec)

    def train_dataloader(self) -> DataLoader:
        raw = self.uses_gpu_augment()
        if raw:
            self._augment = BatchAugment(self.train_spec or {}, self.mean, self.std)
            log.info("data.gpu_augment: training augmentation runs on batches on the device")
        elif self.gpu_augment_mode == "auto" and unsupported_steps(self.train_spec):
            log.debug("data.gpu_augment=auto: CPU augmentation (%s)", ", ".join(unsupported_steps(self.train_spec)))
        return self._loader("train", shuffle=True, raw=raw)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device-side augmentation of raw training batches (a no-op for every other batch)."""
        inputs, labels = batch
        if not (isinstance(inputs, dict) and RAW_KEY in inputs):
            return batch
        inputs = dict(inputs)
        images, sizes = inputs.pop(RAW_KEY), inputs.pop(RAW_SIZES_KEY)
        if self._augment is None:
            self._augment = BatchAugment(self.train_spec or {}, self.mean, self.std)
        generator, rng = self._augment_random(images.device)
        images = self._augment(images, sizes, generator, rng)
        if inputs:
            return {"images": images, **inputs}, labels
        return images, labels

    def _augment_random(self, device: torch.device) -> tuple[torch.Generator, random.Random]:
        """Generators of the device-side augmentation, seeded from the run's seed, the epoch and the rank
        (batches reach the device in the same order whatever the number of loader workers)."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        state = self._augment_state
        if state is None or state[0] != epoch or state[1].device != device:
            seed = derived_seed(self.shuffle_seed, epoch, self._process_slot()[0])
            state = (epoch, torch.Generator(device=device).manual_seed(seed), random.Random(seed))
            self._augment_state = state
        return state[1], state[2]

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own NumPy and Python seeds, derived from the loader's base seed
    (the augmentation is seeded per sample, see :class:`ImageDataset`)."""
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)


def default_num_workers() -> int:
    """Loader processes: the cores this process may use, less one for the training loop, at most 8."""
    return max(0, min(8, available_cores() - 1))
