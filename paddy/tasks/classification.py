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

from paddy.tasks.metrics import class_metrics, class_tag_names, scalar_metrics
from paddy.tasks.optim import create_optimizer, create_scheduler

# Shown in the progress bar (the other scalars go to the loggers only).
_PROG_BAR_SCALARS = ("acc", "f1")


class ClassificationTask(LightningModule):
    """Cross-entropy training of ``model`` with accuracy and macro-F1 on every split.

    Logged metrics (see :mod:`paddy.tasks.metrics`): ``train/loss|acc|f1`` (``f1`` = macro F1);
    ``val/`` and ``test/``: ``loss``, ``acc``, ``f1``, ``precision_macro``, ``recall_macro``,
    ``f1_weighted``, ``precision_weighted``, ``recall_weighted`` and ``f1_class/<class name>``;
    ``val/acc_best`` and ``val/f1_best``. After each validation/test epoch, :attr:`last_confusion`
    holds that split's confusion matrix (CPU ``int64``, rows = true class, columns = predicted) and
    :attr:`last_f1_class` its per-class F1 (CPU ``float32``).

    Args:
        model: any ``nn.Module`` mapping ``B x 3 x H x W`` images to ``B x num_classes`` logits (an
            :class:`~paddy.models.ImageClassifier` gets separate backbone/head learning rates).
        num_classes: number of classes.
        optimizer: options of :func:`~paddy.tasks.optim.create_optimizer` (``name``, ``lr``,
            ``head_lr``, ``weight_decay``, ...).
        scheduler: options of :func:`~paddy.tasks.optim.create_scheduler` (``name``, ...).
        label_smoothing: cross-entropy label smoothing.
        class_weights: one loss weight per class (:func:`paddy.settings.class_weights`), or None.
        class_names: kept in the checkpoint's hyperparameters for later prediction.
        config: the run's resolved config as plain containers, stored with the checkpoint.
    """

    def __init__(self, model: nn.Module, num_classes: int, optimizer: dict | None = None,
                 scheduler: dict | None = None, label_smoothing: float = 0.0,
                 class_names: list[str] | None = None, config: dict | None = None, channels_last: bool = False,
                 mixup: dict | None = None, class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.channels_last = channels_last
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.mixup = _create_mixup(mixup, num_classes, label_smoothing)
        self.train_metrics = scalar_metrics(num_classes, "train")
        self.val_metrics = scalar_metrics(num_classes, "val")
        self.test_metrics = scalar_metrics(num_classes, "test")
        self.val_class_metrics = class_metrics(num_classes, "val")
        self.test_class_metrics = class_metrics(num_classes, "test")
        self.class_tags = class_tag_names(class_names, num_classes)
        self.last_confusion: dict[str, torch.Tensor] = {}
        self.last_f1_class: dict[str, torch.Tensor] = {}
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(), MeanMetric()
        self.val_acc_best, self.val_f1_best = MaxMetric(), MaxMetric()
        # Best-so-far values travel in checkpoints, so a resumed run keeps its record.
        self.val_acc_best.persistent(True)
        self.val_f1_best.persistent(True)

    def forward(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        # Models with extra inputs (DCT features, ...) get a dict: model(images=..., dct=...).
        if isinstance(inputs, dict):
            if self.channels_last:
                inputs = {**inputs, "images": inputs["images"].contiguous(memory_format=torch.channels_last)}
            return self.model(**inputs)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.model(inputs)

    def _shared_step(self, batch: tuple[Any, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, labels = batch
        logits = self(inputs)
        return self.criterion(logits, labels), logits, labels

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.mixup is not None:
            inputs, labels = batch
            if isinstance(inputs, dict):
                raise ValueError("model.mixup works on image-only models (this model takes extra inputs)")
            mixed, soft_targets = self.mixup(inputs, labels)
            logits = self(mixed)
            loss = _soft_target_loss(logits, soft_targets, self.criterion.weight)
        else:
            loss, logits, labels = self._shared_step(batch)
        # update(), not __call__: no per-batch value is computed. A non-finite loss (a step the guard
        # skips) gets weight 0, decided on the device (torchmetrics' own NaN check reads a bool back).
        loss_value = loss.detach()
        finite = torch.isfinite(loss_value)
        self.train_loss.update(torch.where(finite, loss_value, torch.zeros_like(loss_value)), finite.float())
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._shared_step(batch)
        self.val_loss.update(loss)
        self.val_metrics.update(logits, labels)
        self.val_class_metrics.update(logits, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val", self.val_metrics, self.val_class_metrics)
        if values is None or self.trainer.sanity_checking:
            # The sanity-check validation must not count towards the best-so-far values.
            return
        self.val_acc_best(values["val/acc"])
        self.val_f1_best(values["val/f1"])
        # Epoch values are the same on every DDP process (the metrics synchronised at compute);
        # sync_dist only says so to Lightning.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self.log("val/f1_best", self.val_f1_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._shared_step(batch)
        self.test_loss.update(loss)
        self.test_metrics.update(logits, labels)
        self.test_class_metrics.update(logits, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", self.test_metrics, self.test_class_metrics)

    def _log_epoch_metrics(self, split: str, scalars: MetricCollection,
                           per_class: MetricCollection) -> dict[str, torch.Tensor] | None:
        """Compute ``split``'s epoch metrics once, log the scalars and per-class F1, keep the
        confusion matrix in :attr:`last_confusion`, and reset the states for the next epoch.

        Returns the scalar values, or None when the epoch saw no batch (nothing is logged then).
        """
        # Under DDP a process may have had no batch of a tiny split, but every process must compute
        # (it is a collective): only a single process can skip an epoch without batches.
        if self.trainer.world_size == 1 and not _was_updated(scalars):
            return None
        values = scalars.compute()
        scalars.reset()
        shown = {f"{split}/{name}" for name in _PROG_BAR_SCALARS}
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True, sync_dist=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown}, sync_dist=True)
        extra = per_class.compute()
        per_class.reset()
        f1_class = extra[f"{split}/f1_class"].detach().float()
        self.log_dict({f"{split}/f1_class/{tag}": f1_class[i] for i, tag in enumerate(self.class_tags)}, sync_dist=True)
        self.last_f1_class[split] = f1_class.cpu()
        self.last_confusion[split] = extra[f"{split}/confusion"].detach().to("cpu", torch.int64)
        return values

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except for fused optimizers under mixed precision, which Lightning
        refuses to clip (they unscale fp16 gradients inside their step): paddy unscales first when a
        GradScaler is active (the scaler then skips its own unscaling) and clips here."""
        if not gradient_clip_val or not getattr(optimizer, "_step_supports_amp_scaling", False):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if str(gradient_clip_algorithm or "norm") == "value":
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
        else:
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))

    def configure_optimizers(self) -> Any:
        options = dict(self.hparams.optimizer or {})
        optimizer = create_optimizer(self.model, **options)
        sched_options = dict(self.hparams.scheduler or {"name": "none"})
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total is not None and math.isfinite(total) else 0
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        per_epoch = total // epochs if epochs and epochs > 0 else None
        scheduler = create_scheduler(optimizer, total, steps_per_epoch=per_epoch, **sched_options)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _was_updated(collection: MetricCollection) -> bool:
    """Whether ``collection`` saw an ``update`` since its last reset (an empty epoch has none)."""
    return any(metric.update_called for metric in collection.values(copy_state=False))


def _soft_target_loss(logits: torch.Tensor, soft_targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy against mixed (soft) targets; with class weights, each sample weighs its targets'
    mix of them and the mean is over those weights, as ``nn.CrossEntropyLoss(weight=...)`` does."""
    per_class = -soft_targets * torch.log_softmax(logits.float(), dim=-1)
    if weight is None:
        return per_class.sum(-1).mean()
    return (per_class * weight).sum() / (soft_targets * weight).sum()


def _create_mixup(options: dict | None, num_classes: int, label_smoothing: float):
    """timm's batch Mixup/CutMix (Zhang et al., 2018; Yun et al., 2019), or None when both alphas are 0."""
    options = dict(options or {})
    mixup_alpha, cutmix_alpha = float(options.get("mixup_alpha", 0.0)), float(options.get("cutmix_alpha", 0.0))
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=float(options.get("prob", 1.0)),
                 switch_prob=float(options.get("switch_prob", 0.5)), label_smoothing=label_smoothing,
                 num_classes=num_classes)
