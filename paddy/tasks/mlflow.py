"""What a finished run leaves in MLflow beyond Lightning's params and metrics (``logger=mlflow`` or ``many``).

Lightning's :class:`~lightning.pytorch.loggers.MLFlowLogger` already logs the module's hyperparameters
(the resolved config, flattened to ``config/optimizer/lr``-style keys, values cut at 250 characters) and
every metric the task logs, per epoch. :func:`log_run_artifacts` adds, once the run's ``metrics.json``
is written, what TensorBoard shows in other tabs and the run directory holds:

* params: the key settings of TensorBoard's HPARAMS row (``model.name``, ``optimizer.lr``, ...,
  :func:`paddy.tasks.dashboards.key_hparams`), so MLflow's run table compares the same columns;
* artifacts: ``metrics.json``, ``history.json``, ``training_plot.png``, ``config.yaml`` (the full
  resolved config the params truncate), Hydra's ``.hydra/`` files under ``hydra/``, and TensorBoard's
  images as PNGs: ``confusion_matrix_val.png`` and ``confusion_matrix_test.png`` (the matrices of
  ``metrics.json``: the last validation epoch, the best checkpoint's test) and
  ``samples_train_augmented.png``;
* tags: ``best_checkpoint`` and ``last_checkpoint`` (paths in the run directory, not uploaded) and
  ``run_dir``.

TensorBoard's ``hparams/*`` scalars (the HPARAMS tab's columns) have no copies here: MLflow's run table
shows the same values as the last ``val/acc_best``, ``val/f1_best``, ``test/acc`` and ``test/f1``.
mlflow itself is imported only by Lightning's logger (the optional extra ``paddy[mlflow]``); a run
without an MLflow logger never touches it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.loggers import MLFlowLogger

from paddy.artifacts import HISTORY_FILE, METRICS_FILE

log = logging.getLogger(__name__)

# Run-directory files uploaded as they are (those that exist).
RUN_FILES = (METRICS_FILE, HISTORY_FILE, "training_plot.png")
# Training samples in samples_train_augmented.png without a TensorBoardDashboards callback (its default).
SAMPLE_COUNT = 16


def mlflow_loggers(trainer: Trainer) -> list[MLFlowLogger]:
    """The trainer's MLflow loggers (none unless ``logger=mlflow`` or ``many``)."""
    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]


def log_run_artifacts(trainer: Trainer, output_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    """Upload the run's files, figures, key params and checkpoint tags to every MLflow logger of
    ``trainer`` (rank 0 only; nothing without one). A tracking store that fails here costs a warning,
    not the finished run: its checkpoints and ``metrics.json`` are already on disk."""
    if not trainer.is_global_zero:
        return
    for logger in mlflow_loggers(trainer):
        try:
            _log_files(logger, trainer, Path(output_dir), metrics)
            _log_figures(logger, trainer, metrics)
        except Exception as err:  # noqa: BLE001 - any store or network error: warn, keep the run
            where = getattr(logger, "_tracking_uri", "its tracking store")  # Lightning keeps it private
            log.warning("MLflow (%s): could not log the run's artifacts: %s", where, err)
            continue
        log.info("MLflow: run %s (experiment %s) in %s", logger.run_id, logger.experiment_id,
                 logger.experiment.tracking_uri)


def _log_files(logger: MLFlowLogger, trainer: Trainer, output_dir: Path, metrics: Mapping[str, Any]) -> None:
    """Key params, the run directory's summary files, the full config and the checkpoint tags."""
    from paddy.tasks.dashboards import key_hparams

    client, run_id = logger.experiment, logger.run_id
    config = dict(trainer.lightning_module.hparams.get("config") or {})
    params = key_hparams(config, precision=str(trainer.precision))  # as in TensorBoard's HPARAMS row
    logger.log_hyperparams(params)
    for name in RUN_FILES:
        if (output_dir / name).is_file():
            client.log_artifact(run_id, str(output_dir / name))
    if config:
        client.log_dict(run_id, config, "config.yaml")
    if (output_dir / ".hydra").is_dir():
        client.log_artifacts(run_id, str(output_dir / ".hydra"), "hydra")
    tags = {"best_checkpoint": metrics.get("ckpt_path"), "last_checkpoint": metrics.get("last_ckpt_path"),
            "run_dir": str(output_dir.resolve())}
    for key, value in tags.items():
        if value:
            client.set_tag(run_id, key, str(value))


def _log_figures(logger: MLFlowLogger, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
    """TensorBoard's images as PNG artifacts: the last validation and the test confusion matrices
    (from ``metrics.json``) and a grid of augmented training samples."""
    from paddy.tasks.dashboards import (
        TensorBoardDashboards,
        augmented_samples,
        confusion_matrix_figure,
        sample_grid_figure,
    )

    client, run_id = logger.experiment, logger.run_id
    classes = list(metrics.get("classes") or [])
    for split, confusion in (metrics.get("confusion_matrix") or {}).items():
        figure = confusion_matrix_figure(confusion, classes, title=f"{split} confusion matrix")
        client.log_figure(run_id, figure, f"confusion_matrix_{split}.png")
    dashboards = next((c for c in trainer.callbacks if isinstance(c, TensorBoardDashboards)), None)
    count = dashboards.num_samples if dashboards is not None else SAMPLE_COUNT  # 0: no grid, as in TensorBoard
    if count:
        images, labels = augmented_samples(trainer, count)
        titles = [classes[y] if y < len(classes) else str(y) for y in labels]
        client.log_figure(run_id, sample_grid_figure(images, titles), "samples_train_augmented.png")


__all__ = ["log_run_artifacts", "mlflow_loggers"]
