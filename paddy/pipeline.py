"""One training run from a composed config: the library behind ``python -m paddy.train``.

    cfg.data -> DataModule (validated before anything else)
    cfg.backbone + cfg.attention + cfg.model -> nn.Module
    cfg.optimizer + cfg.scheduler -> ClassificationTask
    cfg.trainer + cfg.callbacks + cfg.logger -> lightning.Trainer
    fit -> test the best checkpoint -> metrics.json (paddy.artifacts) -> metrics returned (the sweeper reads one)
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from paddy.artifacts import train_metrics, write_metrics
from paddy.config import instantiate
from paddy.data.datamodule import ImageDataModule
from paddy.errors import PaddyError
from paddy.model_inputs import input_features
from paddy.models.factory import ModelConfigError, build_model
from paddy.settings import check_settings, check_writable, class_weights
from paddy.tasks.callbacks import EpochSeed, RunHistory, SlurmRequeue
from paddy.tasks.classification import ClassificationTask
from paddy.tasks.mlflow import log_run_artifacts
from paddy.utils.artifacts import measure_throughput, model_size
from paddy.utils.checkpoints import CheckpointError, check_state_dict, model_weights, read_checkpoint
from paddy.utils.runtime import gpu_trainer_defaults, logs_muted, resolve_channels_last, resolve_precision, uses_gpu

log = logging.getLogger("paddy")

# Lightning warnings that say nothing actionable for paddy's users (paddy chose these settings).
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*treespec, LeafSpec.*",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class RunConfigError(PaddyError):
    """A top-level run setting (``ckpt_path``, ``resume``, ...) that cannot be honoured."""


def _quiet_logging() -> None:
    """One line per message: Lightning and torchmetrics add console handlers of their own next to
    Hydra's; drop them when the root logger already prints (and drop Lightning's product tips)."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a group (``callbacks``, ``logger``); skip nulls."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


RECIPE_CALLBACKS = ("freeze", "ema", "trainer_guard", "explain")  # top-level nodes: a callback's _target_ and `enabled`


def recipe_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of the training recipe: each of :data:`RECIPE_CALLBACKS` names its class by
    ``_target_`` and is on while its ``enabled`` is; plus the per-epoch seeding (``seed``) and, in a
    trial of paddy's sweeper, Optuna's pruning (``++optuna={...}``)."""
    callbacks: list[L.Callback] = [EpochSeed(int(cfg.seed))] if cfg.get("seed") is not None else []
    for key in RECIPE_CALLBACKS:
        node = cfg.get(key)
        if node is not None and "_target_" in node and node.get("enabled", True):
            callbacks.append(instantiate({k: v for k, v in node.items() if k != "enabled"}))
    if cfg.get("optuna"):
        from paddy.tasks.pruning import OptunaPruning

        callbacks.append(OptunaPruning(**OmegaConf.to_container(cfg.optuna, resolve=True)))
    return callbacks


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """Instantiate ``cfg.data`` and run its setup (index + verify + split)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.get("seed") is not None:
        datamodule.shuffle_seed = int(cfg.seed)
    datamodule.setup("fit")
    return datamodule


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as Trainer arguments, with the precision the device can run and the GPU defaults."""
    options = gpu_trainer_defaults(OmegaConf.to_container(cfg.trainer, resolve=True))
    options["precision"] = resolve_precision(options.get("precision"), options.get("accelerator"))
    # paddy's datamodule shards the data itself under DDP (each evaluation image exactly once, the
    # training order a function of seed and epoch); Lightning's sampler would pad and reshuffle.
    options["use_distributed_sampler"] = False
    return options


def build_task(cfg: DictConfig, net: torch.nn.Module, class_names: list[str], on_gpu: bool,
               train_counts: list[int] | None = None) -> ClassificationTask:
    """The LightningModule of a run: ``net`` with ``cfg.optimizer``/``scheduler``/``model`` options,
    in channels_last memory format and compiled when the config says so; ``train_counts`` (images per
    class in the training split) for ``model.class_weights=auto``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    channels_last = resolve_channels_last(model_cfg.get("channels_last"), on_gpu)
    task = ClassificationTask(
        net, len(class_names),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        label_smoothing=model_cfg.get("label_smoothing", 0.0),
        class_names=list(class_names),
        config=OmegaConf.to_container(cfg, resolve=True),
        channels_last=channels_last,
        mixup=OmegaConf.to_container(cfg.mixup, resolve=True) if cfg.get("mixup") else None,
        class_weights=class_weights(model_cfg.get("class_weights"), train_counts or [1] * len(class_names)),
    )
    if channels_last:
        task.model.to(memory_format=torch.channels_last)
    if model_cfg.get("compile"):
        # In place (nn.Module.compile): state-dict keys and checkpoints stay those of the plain model.
        log.info("model.compile=true: torch.compile of the network (the first steps take a while to compile)")
        task.model.compile()
    return task


def build_trainer(cfg: DictConfig, trainer_options: dict[str, Any], extra_callbacks: list[L.Callback]) -> L.Trainer:
    """A Trainer with the configured callbacks and loggers, the recipe callbacks and ``extra_callbacks``."""
    callbacks = _instantiate_all(cfg.get("callbacks")) + recipe_callbacks(cfg) + list(extra_callbacks)
    if SLURMEnvironment.detect():  # checkpoint + requeue on SLURM's signal without a DDP deadlock
        callbacks.append(SlurmRequeue())
    loggers = _instantiate_all(cfg.get("logger"))
    if not loggers:  # logger=none: callbacks that only feed a logger have nothing to write to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return L.Trainer(**trainer_options, callbacks=callbacks, logger=loggers or False)


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train (and test) as ``cfg`` says; write the run artifacts into ``cfg.paths.output_dir``.

    ``extra_callbacks`` join the configured ones (for instruments such as the throughput benchmark's
    step timer). Returns the final metrics (the contents of ``metrics.json``).
    """
    started = time.perf_counter()
    output_dir = start_run(cfg)
    parts = model_parts(cfg)
    trusted = bool(cfg.get("trust_checkpoint", False))
    ckpt_path = resolve_resume(cfg.get("ckpt_path"), cfg.get("resume"), output_dir)

    log.info("Data: %s", cfg.data.source._target_.rsplit(".", 1)[-1])
    datamodule = build_datamodule(cfg)
    net, size = build_network(datamodule, *parts)
    trainer_options = trainer_settings(cfg)
    task = build_task(cfg, net, list(datamodule.classes), uses_gpu(trainer_options.get("accelerator")),
                      list(datamodule.class_counts()["train"].values()))
    history = RunHistory(output_dir)
    trainer = build_trainer(cfg, trainer_options, [history, *(extra_callbacks or [])])
    checkpoint = checkpoint_callback(trainer)
    if ckpt_path is not None:
        check_resumable(ckpt_path, task, trusted)

    log.info("Training for at most %s epochs; run directory: %s", trainer.max_epochs, output_dir)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trusted)
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    test_metrics = best_checkpoint_test(cfg, trainer, task, datamodule, history, checkpoint, trusted)
    metrics = train_metrics(cfg, datamodule, task, trainer, history=history.history, checkpoint=checkpoint,
                            fit=fit_metrics, test=test_metrics, fps=validation_fps(trainer, task, datamodule),
                            size=size, precision=trainer_options.get("precision"),
                            optimized_value=_metric_value(cfg.get("optimized_metric"), {**fit_metrics, **test_metrics}),
                            started=started)
    if not trainer.is_global_zero:
        return metrics
    write_metrics(output_dir, metrics)
    log_run_artifacts(trainer, output_dir, metrics)  # logger=mlflow|many: files, matrices, checkpoint tags
    save_predictions(cfg, datamodule, checkpoint, trainer_options, trusted)
    log.info("Done in %.0f s: best val acc %s (epoch %s), test acc %s. Artifacts in %s",
             metrics["total_time_s"], _fmt(metrics.get("valid_acc")), metrics.get("best_epoch"),
             _fmt(metrics.get("test_acc")), output_dir)
    return metrics


def start_run(cfg: DictConfig) -> Path:
    """What comes before anything is built: one line per log message (warnings only on other DDP ranks),
    the settings and the run directory checked, every generator seeded. Returns the run directory."""
    _quiet_logging()
    if rank_zero_only.rank > 0:  # the other DDP processes: warnings and errors only, no copies of rank 0's log
        log.setLevel(logging.WARNING)
    check_settings(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir, "the run directory")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    return output_dir


def model_parts(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``cfg.backbone``, ``cfg.attention`` and ``cfg.model`` as dicts, checked by building the network once
    with a stand-in class count: a bad model config (or a missing weights file, or pretrained weights that
    cannot be had) fails before any data is read."""
    parts = tuple(OmegaConf.to_container(cfg[key], resolve=True) for key in ("backbone", "attention", "model"))
    with logs_muted("paddy.models"):
        try:
            build_model(2, *parts)
        except PaddyError:
            raise  # ModelConfigError, PretrainedWeightsError, ...: their message already names the setting
        except ValueError as err:  # a check in the model code or in timm
            raise ModelConfigError(f"model config: {err}") from err
    return parts


def build_network(datamodule: ImageDataModule, backbone_cfg: dict[str, Any], attention_cfg: dict[str, Any],
                  model_cfg: dict[str, Any]) -> tuple[torch.nn.Module, tuple[int, float]]:
    """The run's network for the data's classes (the data module set up to compute the extra inputs it
    takes) and its size: (parameters, MB)."""
    net = build_model(datamodule.num_classes, backbone_cfg, attention_cfg, model_cfg)
    datamodule.request_features(input_features(net), model_cfg)
    num_params, size_mb = model_size(net)
    log.info("Model: %s = %s + attention %s (%.2f M parameters) for %d classes", model_cfg.get("name"),
             backbone_cfg["name"], attention_cfg.get("name", "none"), num_params / 1e6, datamodule.num_classes)
    return net, (num_params, size_mb)


def checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The trainer's :class:`ModelCheckpoint` (None without one), its folder checked to be writable."""
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is not None and checkpoint.dirpath:
        check_writable(checkpoint.dirpath, "the checkpoint folder")
    return checkpoint


def best_checkpoint_test(cfg: DictConfig, trainer: L.Trainer, task: ClassificationTask, datamodule: ImageDataModule,
                         history: RunHistory, checkpoint: ModelCheckpoint | None, trusted: bool) -> dict[str, float]:
    """Test the best checkpoint on the test split (unless ``test=false`` or there is no test split);
    returns the logged test metrics ({} when not tested)."""
    if not (cfg.get("test", True) and datamodule.has_split("test")):
        return {}
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    # Loading the best checkpoint for testing also restores callback state (an older history).
    finished_history = copy.deepcopy(history.history)
    results = trainer.test(task, datamodule=datamodule, ckpt_path=best_path or None, verbose=False,
                           weights_only=not trusted)
    history.history = finished_history
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def save_predictions(cfg: DictConfig, datamodule: ImageDataModule, checkpoint: ModelCheckpoint | None,
                     trainer_options: dict[str, Any], trusted: bool) -> None:
    """With ``save_predictions`` (auto: a k-fold run), :func:`paddy.evaluate.evaluate` the best checkpoint on the
    val and test splits: per-image predictions and reports in ``eval_val/`` and ``eval_test/`` of the run."""
    wanted = cfg.get("save_predictions", "auto")
    if wanted == "auto":
        wanted = bool(cfg.data.get("n_folds"))
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if not wanted or not best:
        return
    from paddy.evaluate import evaluate

    device = "cuda" if uses_gpu(trainer_options.get("accelerator")) else "cpu"
    for split in (s for s in ("val", "test") if datamodule.has_split(s)):
        result = evaluate(best, split=split, device=device, latency_runs=0, throughput_runs=0, trusted=trusted)
        log.info("Predictions of the best checkpoint on the %s split: %s", split, result["output_dir"])


def validation_fps(trainer: L.Trainer, task: ClassificationTask, datamodule: ImageDataModule) -> float | None:
    """Inference images/s of the trained network on validation batches (rank 0 only; None without a val split)."""
    if datamodule.has_split("val") and trainer.is_global_zero:
        return measure_throughput(task.model, datamodule.val_dataloader(), trainer.strategy.root_device)
    return None


def resolve_resume(ckpt_path: str | None, resume: str | None, output_dir: Path) -> str | None:
    """``ckpt_path`` if given; with ``resume=auto`` the run directory's ``checkpoints/last.ckpt``
    when it exists (a re-run of the same command with the same run dir continues), else None."""
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise RunConfigError(f"ckpt_path={ckpt_path} does not exist (expected a .ckpt file of a paddy run)")
        return str(ckpt_path)
    if resume in (None, False, "never", "none"):
        return None
    if resume != "auto":
        raise RunConfigError(f"resume={resume!r} (expected auto or null)")
    found = resumable_checkpoints(output_dir)
    if found:
        log.info("resume=auto: continuing from %s", found[-1])
        return str(found[-1])
    log.info("resume=auto: no %s yet, starting a new run", output_dir / "checkpoints" / "last.ckpt")
    return None


def resumable_checkpoints(output_dir: Path) -> list[Path]:
    """A run directory's checkpoints to continue from, oldest first: ``checkpoints/last.ckpt`` (end of
    an epoch) and Lightning's ``hpc_ckpt_*.ckpt`` (saved mid-epoch when SLURM signalled preemption)."""
    candidates = [output_dir / "checkpoints" / "last.ckpt", *output_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime)


def check_resumable(ckpt_path: str, task: ClassificationTask, trusted: bool) -> None:
    """Read the checkpoint to resume from as the trainer will, and check its network is this run's
    (backbone, attention, class count): a wrong file is refused before training, in one line."""
    checkpoint = read_checkpoint(ckpt_path, trusted=trusted)
    try:
        check_state_dict(task.model, model_weights(checkpoint), ckpt_path)
    except CheckpointError as err:
        raise RunConfigError(f"ckpt_path: {err} (resume needs a checkpoint of this run's model and classes)") from None


def _metric_value(name: str | None, values: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` (what a sweep optimizes) among the logged metrics."""
    if not name:
        return None
    if name not in values:
        raise RunConfigError(f"optimized_metric={name!r} was not logged (logged: {', '.join(sorted(values))})")
    return float(values[name])


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


__all__ = ["RunConfigError", "best_checkpoint_test", "build_datamodule", "build_network", "build_task", "build_trainer",
           "checkpoint_callback", "model_parts", "resolve_resume", "resumable_checkpoints", "start_run", "train",
           "trainer_settings", "validation_fps"]
