"""The LightningModule for image classification: steps, loss, metrics, optimizers.

It knows nothing of files or datasets: it gets an ``nn.Module`` and plain option dicts. Metrics are
torchmetrics objects updated on the model's device; they are computed once per epoch, so the
training step does no host synchronisation beyond what Lightning's logging needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from paddy.tasks.optim import create_optimizer, create_scheduler


def classification_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
    })


class ClassificationTask(LightningModule):
    """Cross-entropy training of ``model`` with accuracy and macro-F1 on every split.

    Args:
        model: any ``nn.Module`` mapping ``B x 3 x H x W`` images to ``B x num_classes`` logits (an
            :class:`~paddy.models.ImageClassifier` gets separate backbone/head learning rates).
        num_classes: number of classes.
        optimizer: options of :func:`~paddy.tasks.optim.create_optimizer` (``name``, ``lr``,
            ``head_lr``, ``weight_decay``, ...).
        scheduler: options of :func:`~paddy.tasks.optim.create_scheduler` (``name``, ...).
        label_smoothing: cross-entropy label smoothing.
        class_names: kept in the checkpoint's hyperparameters for later prediction.
        config: the run's resolved config as plain containers, stored with the checkpoint.
    """

    def __init__(self, model: nn.Module, num_classes: int, optimizer: dict | None = None,
                 scheduler: dict | None = None, label_smoothing: float = 0.0,
                 class_names: list[str] | None = None, config: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best, self.val_f1_best = MaxMetric(), MaxMetric()

    def forward(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        # Models with extra inputs (DCT features, ...) get a dict: model(images=..., dct=...).
        return self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)

    def _shared_step(self, batch: tuple[Any, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, labels = batch
        logits = self(inputs)
        return self.criterion(logits, labels), logits, labels

    def on_train_start(self) -> None:
        # The sanity-check validation must not count towards the best-so-far values.
        self.val_acc_best.reset()
        self.val_f1_best.reset()

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._shared_step(batch)
        self.train_loss(loss.detach())
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._shared_step(batch)
        self.val_loss(loss)
        self.val_metrics.update(logits, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_acc_best(values["val/acc"])
        self.val_f1_best(values["val/f1"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)
        self.log("val/f1_best", self.val_f1_best.compute())

    def test_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._shared_step(batch)
        self.test_loss(loss)
        self.test_metrics.update(logits, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        options = dict(self.hparams.optimizer or {})
        optimizer = create_optimizer(self.model, **options)
        sched_options = dict(self.hparams.scheduler or {"name": "none"})
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total is not None and math.isfinite(total) else 0
        scheduler = create_scheduler(optimizer, total, **sched_options)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
