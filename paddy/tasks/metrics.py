"""The torchmetrics objects of :class:`~paddy.tasks.classification.ClassificationTask`, by split.

Two kinds per split:

* :func:`scalar_metrics`: one number each (accuracy, precision/recall/F1 macro and weighted), logged
  as ``<split>/<name>``. The training split gets only accuracy and macro-F1 (they update every step).
* :func:`class_metrics`: per-class F1 (a vector) and the confusion matrix (a matrix), computed once
  per validation/test epoch; per-class F1 is logged as ``<split>/f1_class/<class name>``.

All of them keep their state on the model's device: the steps only ``update``; the host sees the
values once per epoch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

SPLITS = ("train", "val", "test")

# Scalar names logged for every split (the names other code reads: acc, f1 = macro F1).
TRAIN_SCALARS = ("acc", "f1")
EVAL_SCALARS = ("acc", "f1", "precision_macro", "recall_macro", "f1_weighted", "precision_weighted",
                "recall_weighted")

_UNSAFE_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def scalar_metrics(num_classes: int, split: str) -> MetricCollection:
    """Scalar metrics of ``split`` (``train``: acc + macro F1; ``val``/``test``: all of
    :data:`EVAL_SCALARS`), named ``<split>/<name>``.

    Raises:
        ValueError: for fewer than 2 classes or an unknown split.
    """
    _check(num_classes, split)
    n = num_classes
    metrics = {
        "acc": MulticlassAccuracy(num_classes=n, average="micro"),
        "f1": MulticlassF1Score(num_classes=n, average="macro"),
    }
    if split != "train":
        metrics.update({
            "precision_macro": MulticlassPrecision(num_classes=n, average="macro"),
            "recall_macro": MulticlassRecall(num_classes=n, average="macro"),
            "f1_weighted": MulticlassF1Score(num_classes=n, average="weighted"),
            "precision_weighted": MulticlassPrecision(num_classes=n, average="weighted"),
            "recall_weighted": MulticlassRecall(num_classes=n, average="weighted"),
        })
    return MetricCollection(metrics, prefix=f"{split}/")


def class_metrics(num_classes: int, split: str) -> MetricCollection:
    """Per-class F1 (``<split>/f1_class``, a ``num_classes`` vector) and the confusion matrix
    (``<split>/confusion``, rows = true class, columns = predicted class, raw counts).

    Raises:
        ValueError: for fewer than 2 classes or an unknown split.
    """
    _check(num_classes, split)
    return MetricCollection({
        "f1_class": MulticlassF1Score(num_classes=num_classes, average=None),
        "confusion": MulticlassConfusionMatrix(num_classes=num_classes, normalize=None),
    }, prefix=f"{split}/")


def sanitize_tag(name: str) -> str:
    """``name`` as one TensorBoard tag component: runs of anything but letters, digits, ``_.-``
    become ``_`` (``"Brown spot (fungal)"`` -> ``"Brown_spot_fungal"``); never empty."""
    cleaned = _UNSAFE_TAG_CHARS.sub("_", str(name)).strip("_")
    return cleaned or "class"


def class_tag_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """One unique, tag-safe name per class: the sanitized ``class_names``, or ``class_<i>`` when
    they are missing or do not match ``num_classes``; duplicates after sanitizing get ``_<i>``."""
    if class_names is None or len(class_names) != num_classes:
        return [f"class_{i}" for i in range(num_classes)]
    names: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(class_names):
        name = base = sanitize_tag(raw)
        suffix = i
        while name in seen:
            name, suffix = f"{base}_{suffix}", suffix + 1
        seen.add(name)
        names.append(name)
    return names


def _check(num_classes: int, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)})")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes}: classification metrics need at least 2 classes")


__all__ = ["EVAL_SCALARS", "SPLITS", "TRAIN_SCALARS", "class_metrics", "class_tag_names", "sanitize_tag",
           "scalar_metrics"]
