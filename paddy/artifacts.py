"""The summary files a run leaves in its directory, written and read in one place.

- ``metrics.json``: a training run's summary (:func:`train_metrics`, written by :func:`write_metrics`):
  what was trained on what, the best epoch, test results, speed and size, where the checkpoints are.
- ``metrics_<split>.json``: ``python -m paddy.evaluate``'s full evaluation (:func:`write_metrics` too).
- ``history.json``: the per-epoch series, written after every epoch by
  :class:`paddy.tasks.callbacks.RunHistory` (with ``training_plot.png``) and read back by
  :func:`read_history`.

This module sits above the models, the data and the training task: it reads a finished trainer,
task and data module. The low-level helpers stay in :mod:`paddy.utils.artifacts` (JSON writing,
model size, best-epoch summary) and the checkpoint lookup in :mod:`paddy.utils.checkpoints`.
Importing it loads neither torch nor Lightning (they are imported where a run is summarised), so
``python -m paddy.report`` stays quick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import DictConfig

    from paddy.data.datamodule import ImageDataModule
    from paddy.tasks.classification import ClassificationTask

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
# Test metrics that metrics.json carries when the test step logged them (as test_<name>).
_EXTRA_TEST_METRICS = ("precision_macro", "recall_macro", "f1_weighted", "precision_weighted", "recall_weighted")


class UnreadableArtifact(ValueError):
    """A run file that is there but cannot be read (its message says which and why)."""


# ---------------------------------------------------------------------------------------------- metrics.json


def train_metrics(cfg: DictConfig, datamodule: ImageDataModule, task: ClassificationTask, trainer: L.Trainer, *,
                  history: Mapping[str, list], checkpoint: ModelCheckpoint | None, fit: Mapping[str, float],
                  test: Mapping[str, float], fps: float | None, size: tuple[int, float], precision: Any,
                  optimized_value: float | None, started: float) -> dict[str, Any]:
    """The contents of a training run's ``metrics.json``.

    ``history``: :class:`~paddy.tasks.callbacks.RunHistory`'s series; ``fit``/``test``: the metrics
    logged by the fit and by the test of the best checkpoint; ``fps``: inference images/s on the
    validation split; ``size``: (parameters, MB); ``precision``: the trainer's; ``started``: the
    ``time.perf_counter()`` of the run's start.
    """
    metrics = {
        **_run_identity(cfg, datamodule),
        **_fit_summary(history, checkpoint, fit),
        "fps": fps,
        "num_params": size[0],
        "size_mb": round(size[1], 3),
        **_checkpoint_paths(checkpoint),
        "precision": str(precision),
        "device": trainer.strategy.root_device.type,
        "total_time_s": round(time.perf_counter() - started, 1),
        **_test_summary(test),
    }
    # "val": the last validation epoch; "test": the best checkpoint on the test split.
    metrics["confusion_matrix"] = {s: m.tolist() for s, m in task.last_confusion.items()}
    metrics["f1_per_class"] = {s: dict(zip(metrics["classes"], v.tolist())) for s, v in task.last_f1_class.items()}
    metrics["optimized_metric"] = cfg.get("optimized_metric")
    metrics["optimized_value"] = optimized_value
    return metrics


def _run_identity(cfg: DictConfig, datamodule: ImageDataModule) -> dict[str, Any]:
    """What was trained on what: model, backbone, attention, dataset, classes and split sizes."""
    return {
        "model_name": cfg.model.get("name"),
        "backbone": cfg.backbone.get("name"),
        "attention": cfg.attention.get("name", "none"),
        "dataset": datamodule.index.name if datamodule.index else None,
        "num_classes": datamodule.num_classes,
        "classes": list(datamodule.classes),
        "split_sizes": {k: len(v) for k, v in datamodule.split_indices.items()},
        "class_counts": datamodule.class_counts(),
        "n_folds": datamodule.n_folds,
        "fold": datamodule.fold if datamodule.n_folds else None,
    }


def _fit_summary(history: Mapping[str, list], checkpoint: ModelCheckpoint | None,
                 fit: Mapping[str, float]) -> dict[str, Any]:
    """The best epoch (by the checkpoint's monitor) with its train/valid values, the best validation
    accuracy and F1 the fit logged, and the epochs run with their times."""
    from paddy.utils.artifacts import best_epoch_summary

    return {
        **best_epoch_summary(dict(history), *_monitored(checkpoint)),
        "val_acc_best": fit.get("val/acc_best"),
        "val_f1_best": fit.get("val/f1_best"),
        "epochs_run": len(history["epoch"]),
        "epoch_times": history["epoch_time"],
    }


def _monitored(checkpoint: ModelCheckpoint | None) -> tuple[str, str]:
    """The history series and mode the best checkpoint is chosen by, so metrics.json names its epoch."""
    from paddy.tasks.callbacks import HISTORY_METRICS

    if checkpoint is None or not checkpoint.monitor:
        return "valid_acc", "max"
    series = {name: key for key, name in HISTORY_METRICS.items()}.get(checkpoint.monitor, "valid_acc")
    return series, checkpoint.mode


def _checkpoint_paths(checkpoint: ModelCheckpoint | None) -> dict[str, str | None]:
    """The best checkpoint and ``last.ckpt`` (None where there is none)."""
    best = checkpoint.best_model_path if checkpoint is not None else ""
    last = Path(checkpoint.dirpath) / "last.ckpt" if checkpoint and checkpoint.dirpath else None
    return {"ckpt_path": best or None, "last_ckpt_path": str(last) if last is not None and last.exists() else None}


def _test_summary(test: Mapping[str, float]) -> dict[str, Any]:
    """``test_acc``, ``test_loss``, ``test_f1`` and the other averages the test of the best checkpoint logged."""
    summary = {}
    if test:
        summary.update({"test_acc": test.get("test/acc"), "test_loss": test.get("test/loss"),
                        "test_f1": test.get("test/f1")})
    for key in _EXTRA_TEST_METRICS:
        if f"test/{key}" in test:
            summary[f"test_{key}"] = test[f"test/{key}"]
    return summary


def write_metrics(directory: str | Path, metrics: Mapping[str, Any], name: str = METRICS_FILE) -> Path:
    """Write ``metrics`` as ``<directory>/<name>`` (indented JSON, tensors as numbers); returns the path."""
    from paddy.utils.artifacts import write_json

    path = Path(directory) / name
    write_json(path, dict(metrics))
    return path


# ---------------------------------------------------------------------------------------------- reading


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``metrics.json``; None when there is none (the run is still going, was interrupted or failed).

    Raises:
        UnreadableArtifact: the file cannot be read, is not JSON or is not a JSON object.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableArtifact(f"{METRICS_FILE} unreadable: {err}") from err
    except ValueError as err:
        raise UnreadableArtifact(f"{METRICS_FILE} corrupt: {err}") from err
    if not isinstance(metrics, dict):
        raise UnreadableArtifact(f"{METRICS_FILE} corrupt: a JSON {type(metrics).__name__}, not an object")
    return metrics


def read_history(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``history.json`` (per-epoch series); None when it is missing or unreadable."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return history if isinstance(history, dict) else None


__all__ = ["HISTORY_FILE", "METRICS_FILE", "UnreadableArtifact", "read_history", "read_metrics", "train_metrics",
           "write_metrics"]
