"""Albumentations pipelines declared as data.

A pipeline is a mapping ``{TransformName: {kwargs}}`` in order (YAML keeps the order), e.g.::

    train:
      RandomResizedCrop: {size: [224, 224], scale: [0.5, 1.0]}
      HorizontalFlip: {p: 0.5}
    eval:
      Resize: {height: 224, width: 224}

Names are albumentations classes. A ``null`` entry is switched off, so one transform can be dropped
from the CLI (``data.transforms.train.HorizontalFlip=null``); ``Name#2`` repeats a transform.
Normalisation with ``data.mean``/``data.std`` and the conversion to a CHW float tensor are appended
to every pipeline, so train and eval are always normalised the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SIZE_ARGUMENTS = ("size", "height", "width", "max_size")  # RandomResizedCrop, Resize, crops, SmallestMaxSize...


def output_side(spec: Mapping[str, Mapping | None] | None) -> int | None:
    """The largest side, in pixels, a step of ``spec`` resizes or crops to (``RandomResizedCrop.size``,
    ``Resize``/``CenterCrop`` ``height``/``width``, ``SmallestMaxSize.max_size``), or None: the shorter
    side a decoder has to deliver so that the pipeline's output is as sharp as from the full image."""
    sides = []
    for kwargs in (spec or {}).values():
        if not isinstance(kwargs, Mapping):
            continue
        for name in _SIZE_ARGUMENTS:
            value = kwargs.get(name)
            for item in value if isinstance(value, Sequence) and not isinstance(value, str) else [value]:
                if isinstance(item, int | float) and not isinstance(item, bool) or str(item).isdigit():
                    sides.append(int(item))
    return max(sides) if sides else None


def decode_side(image_size: int | None, specs: Sequence[Mapping[str, Mapping | None] | None],
                features: Mapping[str, Any] | None = None) -> int | None:
    """The shorter side a decoded photo must keep for ``image_size``, the transform ``specs`` (:func:`output_side`)
    and the extra inputs' extractors (their ``size``: the DCT's); JPEGs are decoded no larger (the one rule of
    the plain loader, predict and explain). None (the full size) when an extractor takes the image as decoded
    (``size: None``)."""
    sizes = [getattr(extractor, "size", None) for extractor in (features or {}).values()]
    if any(size is None for size in sizes):
        return None
    sides = [image_size, *(output_side(spec) for spec in specs), *sizes]
    return max((int(side) for side in sides if side is not None), default=None)


def build_transform(spec: Mapping[str, Mapping | None] | None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> A.Compose:
    """Build an ``A.Compose`` from ``spec`` followed by ``Normalize(mean, std)`` and ``ToTensorV2``."""
    steps = []
    for key, kwargs in (spec or {}).items():
        if kwargs is None or kwargs is False:
            continue
        name = str(key).split("#", 1)[0]
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
            raise ValueError(f"unknown transform {name!r} in data.transforms (expected an albumentations "
                             f"class name such as RandomResizedCrop, HorizontalFlip, ColorJitter, Resize)")
        options = dict(kwargs) if kwargs is not True else {}
        try:
            steps.append(cls(**options))
        except (TypeError, ValueError) as err:
            raise ValueError(f"data.transforms: {name}({options}) is invalid: {err}") from err
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)
