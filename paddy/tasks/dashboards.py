"""TensorBoard dashboards beyond scalars: augmented samples, confusion matrices, one HPARAMS row per run.

:class:`TensorBoardDashboards` writes into the run's :class:`~lightning.pytorch.loggers.TensorBoardLogger`
(and does nothing without one):

* ``samples/train_augmented`` (IMAGES, at train start): a grid of training samples exactly as the
  model sees them (after augmentation), un-normalised back to 0..1, titled with their class;
* ``val/confusion_matrix`` (IMAGES, every validation epoch) and ``test/confusion_matrix`` (after
  testing): row-normalised colours, counts written in the cells for up to 20 classes;
* the HPARAMS tab (at fit end): one session per run holding the key config values
  (:func:`key_hparams`) and the metric columns ``hparams/val_acc_best``, ``hparams/val_f1_best``,
  ``hparams/val_loss`` (at the best ``val/acc`` epoch), plus ``hparams/test_acc`` and
  ``hparams/test_f1`` once the run is tested, so the trials of a sweep compare side by side.

Lightning logs the module's nested hyperparameters at fit start; with the logger's
``default_hp_metric=False`` that only writes ``hparams.yaml`` and no HPARAMS session, and this
callback switches ``default_hp_metric`` off so the run's only session is the clean one written here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

# The HPARAMS metric columns (scalar tags written next to the session).
HPARAM_METRICS = ("hparams/val_acc_best", "hparams/val_f1_best", "hparams/val_loss", "hparams/test_acc",
                  "hparams/test_f1")
# Attention knobs always present in the HPARAMS row ("none" where an attention type lacks one), so the
# runs of a sweep over attention types share one set of columns.
ATTENTION_KNOBS = ("reduction", "kernel_size", "heads", "channel", "spatial", "placement")
# HPARAMS columns TensorBoard lists first and shows by default (it shows the first 5 columns; without
# this it would show the alphabetically first ones, the attention knobs).
HEADLINE_HPARAMS = ("model.name", "backbone.name", "attention.name", "optimizer.lr", "data.image_size")
# Counts are written into the confusion-matrix cells up to this many classes.
MAX_ANNOTATED_CLASSES = 20
# Class names label the confusion matrix's axes up to this many classes.
MAX_LABELLED_CLASSES = 40

HParamValue = bool | int | float | str


class TensorBoardDashboards(Callback):
    """Sample grid, confusion matrices and a one-row-per-run HPARAMS table in TensorBoard.

    Args:
        num_samples: training samples in ``samples/train_augmented`` (0 switches the grid off).
        confusion_matrix: draw ``val/confusion_matrix`` each validation epoch and
            ``test/confusion_matrix`` after testing (reads the task's ``last_confusion``).
        hparams: write the HPARAMS session at fit end.
    """

    def __init__(self, num_samples: int = 16, confusion_matrix: bool = True, hparams: bool = True):
        if num_samples < 0:
            raise ValueError(f"num_samples={num_samples} (expected >= 0)")
        self.num_samples = int(num_samples)
        self.confusion_matrix = bool(confusion_matrix)
        self.hparams = bool(hparams)
        self._best_val_acc = -math.inf
        self._val_loss_at_best: float | None = None

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = tensorboard_logger(trainer)
        if stage == "fit" and self.hparams and logger is not None and getattr(logger, "_default_hp_metric", False):
            # Lightning's hparams at fit start would otherwise open a second HPARAMS session (with an
            # hp_metric of -1) in this run; TensorBoard shows only the first session of a run.
            log.debug("TensorBoardDashboards: switching the TensorBoard logger's default_hp_metric off")
            logger._default_hp_metric = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero or self.num_samples == 0:
            return
        try:
            images, labels = augmented_samples(trainer, self.num_samples)
        except Exception as err:  # a dashboard problem must never stop training
            log.warning("TensorBoardDashboards: no training samples for samples/train_augmented: %s", err)
            return
        names = _class_names(pl_module, int(max(labels, default=0)) + 1)
        figure = sample_grid_figure(images, [names[y] if y < len(names) else str(y) for y in labels])
        logger.experiment.add_image("samples/train_augmented", render_figure(figure), trainer.global_step,
                                    dataformats="HWC")
        logger.experiment.flush()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        acc, loss = metrics.get("val/acc"), metrics.get("val/loss")
        if acc is not None and float(acc) > self._best_val_acc:
            self._best_val_acc = float(acc)
            self._val_loss_at_best = float(loss) if loss is not None else None
        if self.confusion_matrix:
            self._log_confusion(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.confusion_matrix:
            self._log_confusion(trainer, pl_module, "test")
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero or not self.hparams:
            return
        values = {"hparams/test_acc": trainer.callback_metrics.get("test/acc"),
                  "hparams/test_f1": trainer.callback_metrics.get("test/f1")}
        _add_scalars(logger, values, trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero or not self.hparams:
            return
        config = dict(getattr(pl_module, "hparams", {}).get("config") or {})
        params = key_hparams(config, precision=str(trainer.precision))
        metrics = trainer.callback_metrics
        values = {"hparams/val_acc_best": metrics.get("val/acc_best"),
                  "hparams/val_f1_best": metrics.get("val/f1_best"),
                  "hparams/val_loss": self._val_loss_at_best}
        write_hparams_session(logger, params, HPARAM_METRICS)
        _add_scalars(logger, values, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self._best_val_acc, "val_loss_at_best": self._val_loss_at_best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best_val_acc = float(state_dict.get("best_val_acc", -math.inf))
        self._val_loss_at_best = state_dict.get("val_loss_at_best")

    # ------------------------------------------------------------------ helpers

    def _log_confusion(self, trainer: Trainer, pl_module: LightningModule, split: str) -> None:
        logger = tensorboard_logger(trainer)
        confusion = getattr(pl_module, "last_confusion", {}).get(split)
        if logger is None or confusion is None or not trainer.is_global_zero:
            return
        names = _class_names(pl_module, confusion.shape[0])
        title = f"{split} confusion matrix, epoch {trainer.current_epoch}"
        figure = confusion_matrix_figure(confusion, names, title=title)
        logger.experiment.add_image(f"{split}/confusion_matrix", render_figure(figure), trainer.global_step,
                                    dataformats="HWC")
        logger.experiment.flush()


def tensorboard_logger(trainer: Trainer) -> TensorBoardLogger | None:
    """The trainer's first :class:`TensorBoardLogger`, or None."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


# ---------------------------------------------------------------------- hparams


def key_hparams(config: Mapping[str, Any], precision: str | None = None) -> dict[str, HParamValue]:
    """The HPARAMS columns of a run from its resolved config (plain dicts, as ``hparams.config``).

    Keys: ``model.name``, ``backbone.name``, ``backbone.pretrained``, ``attention.name`` and its knobs
    (:data:`ATTENTION_KNOBS` always, plus any other scalar one), ``optimizer.name|lr|head_lr|weight_decay``
    (``head_lr`` null is shown as the ``lr`` it falls back to), ``scheduler.name``,
    ``data.batch_size|image_size``, ``trainer.max_epochs|precision`` (``precision``, when given, is
    the precision the trainer really runs in) and ``seed``. Missing values are ``"none"``; lists
    become strings.
    """
    def get(path: str) -> Any:
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    keys = ["model.name", "backbone.name", "backbone.pretrained", "attention.name"]
    attention = get("attention") if isinstance(get("attention"), Mapping) else {}
    extra_knobs = sorted(k for k, v in attention.items()
                         if k not in ATTENTION_KNOBS and k != "name" and not k.startswith("_")
                         and (v is None or isinstance(v, bool | int | float | str)))
    keys += [f"attention.{k}" for k in (*ATTENTION_KNOBS, *extra_knobs)]
    keys += ["optimizer.name", "optimizer.lr", "optimizer.head_lr", "optimizer.weight_decay", "scheduler.name",
             "data.batch_size", "data.image_size", "trainer.max_epochs", "trainer.precision", "seed"]
    params = {key: get(key) for key in keys}
    if params["optimizer.head_lr"] is None:
        params["optimizer.head_lr"] = params["optimizer.lr"]
    if precision is not None:
        params["trainer.precision"] = precision
    return {key: _hparam_value(value) for key, value in params.items()}


def _hparam_value(value: Any) -> HParamValue:
    if value is None:
        return "none"
    if isinstance(value, bool):  # TensorBoard would show a bool as 0.0/1.0
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value
    return str(value)


def write_hparams_session(logger: TensorBoardLogger, params: Mapping[str, HParamValue],
                          metric_tags: Sequence[str]) -> None:
    """Write one HPARAMS session (experiment, start and end info) into ``logger``'s own run.

    The metric columns read the last value of the scalar tags ``metric_tags`` of the same run. The
    :data:`HEADLINE_HPARAMS` columns are flagged ``differs`` so that TensorBoard lists and shows them
    first (it orders columns by that flag, then by name, and shows the first five).
    """
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(dict(params), {tag: 0.0 for tag in metric_tags})
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in HEADLINE_HPARAMS
    plugin_data.content = content.SerializeToString()
    writer = logger.experiment._get_file_writer()  # SummaryWriter's own writer (Lightning does the same)
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    logger.experiment.flush()


def _add_scalars(logger: TensorBoardLogger, values: Mapping[str, Any], step: int) -> None:
    for tag, value in values.items():
        if value is not None:
            logger.experiment.add_scalar(tag, float(value), step)
    logger.experiment.flush()


# ---------------------------------------------------------------------- samples


def augmented_samples(trainer: Trainer, count: int) -> tuple[list[np.ndarray], list[int]]:
    """``count`` training samples through the training transform, as ``H x W x C`` floats in 0..1.

    Samples are picked round-robin over the classes. The draw uses a copy of the transform and
    restores the global random states, so training sees the same augmentations as without it.
    """
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "dataset"):
        dataset = datamodule.dataset("train")
    else:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
    if dataset is None or len(dataset) == 0:
        raise ValueError("the trainer has no training dataset")
    dataset = copy.copy(dataset)
    if hasattr(dataset, "transform"):
        dataset.transform = copy.deepcopy(dataset.transform)
    if hasattr(dataset, "features"):
        dataset.features = {}
    mean, std = _normalization(datamodule, getattr(dataset, "transform", None))
    labels = getattr(dataset, "labels", None)
    indices = _pick_indices(labels if labels is not None else [0] * len(dataset), count)
    images, targets = [], []
    with _random_states_kept():
        for i in indices:
            inputs, label = dataset[i]
            image = inputs["images"] if isinstance(inputs, Mapping) else inputs
            images.append(_to_unit_image(torch.as_tensor(image), mean, std))
            targets.append(int(label))
    return images, targets


def _pick_indices(labels: Sequence[int], count: int) -> list[int]:
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    queues = [iter(by_class[c]) for c in sorted(by_class)]
    picked: list[int] = []
    while len(picked) < count and queues:
        for queue in list(queues):
            index = next(queue, None)
            if index is None:
                queues.remove(queue)
            elif len(picked) < count:
                picked.append(index)
    return picked


def _normalization(datamodule: Any, transform: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mean, std) of the input normalisation: the datamodule's ``mean``/``std`` attributes, else the
    ``Normalize`` step of an albumentations ``Compose``; (None, None) when neither is found."""
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None:
        import albumentations as A

        step = next((t for t in getattr(transform, "transforms", []) if isinstance(t, A.Normalize)), None)
        if step is not None and step.mean is not None and step.std is not None:
            mean, std = step.mean, step.std
    if mean is None or std is None:
        return None, None
    return np.asarray(mean, dtype=np.float32).reshape(-1), np.asarray(std, dtype=np.float32).reshape(-1)


def _to_unit_image(image: torch.Tensor, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    array = image.detach().float().cpu().numpy()
    if array.ndim == 2:
        array = array[None]
    array = np.moveaxis(array, 0, -1)  # C x H x W -> H x W x C
    if mean is not None and std is not None and array.shape[-1] in (1, len(mean)):
        array = array * std[: array.shape[-1]] + mean[: array.shape[-1]]
    else:  # unknown normalisation: stretch to 0..1
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.clip(array, 0.0, 1.0)


@contextlib.contextmanager
def _random_states_kept() -> Iterator[None]:
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


# ---------------------------------------------------------------------- figures


def sample_grid_figure(images: Sequence[np.ndarray], titles: Sequence[str]) -> Any:
    """A near-square grid of ``images`` (``H x W x C`` in 0..1) titled ``titles``."""
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("no images to draw")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    figure = Figure(figsize=(2.0 * cols, 2.2 * rows), dpi=100)
    for k in range(rows * cols):
        ax = figure.add_subplot(rows, cols, k + 1)
        ax.axis("off")
        if k < len(images):
            image = images[k]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                      vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(_short(titles[k], 22), fontsize=8)
    figure.tight_layout()
    return figure


def confusion_matrix_figure(confusion: torch.Tensor | np.ndarray, class_names: Sequence[str],
                            title: str = "confusion matrix") -> Any:
    """Rows = true class, columns = predicted; colours are row-normalised (recall per class) and,
    for up to :data:`MAX_ANNOTATED_CLASSES` classes, each cell shows its count."""
    from matplotlib.figure import Figure

    counts = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {counts.shape}")
    n = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    ax = figure.add_subplot(1, 1, 1)
    shown = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if rates[i, j] > 0.5 else "black")
    if n <= MAX_LABELLED_CLASSES:
        labels = [_short(name, 18) for name in class_names[:n]] + [str(i) for i in range(len(class_names), n)]
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    accuracy = np.trace(counts) / max(int(counts.sum()), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.3f}, n={int(counts.sum())})", fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    figure.tight_layout()
    return figure


def render_figure(figure: Any) -> np.ndarray:
    """A matplotlib ``Figure`` as an ``H x W x 3`` uint8 array (Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _class_names(pl_module: LightningModule, num_classes: int) -> list[str]:
    names = list(getattr(pl_module, "hparams", {}).get("class_names") or [])
    return names if len(names) >= num_classes else names + [str(i) for i in range(len(names), num_classes)]


def _short(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["ATTENTION_KNOBS", "HEADLINE_HPARAMS", "HPARAM_METRICS", "TensorBoardDashboards", "augmented_samples",
           "confusion_matrix_figure", "key_hparams", "render_figure", "sample_grid_figure", "tensorboard_logger",
           "write_hparams_session"]
