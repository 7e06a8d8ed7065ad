"""Optuna pruning inside a training run: report a metric to the run's trial every validation epoch and
stop the run when the study's pruner says so.

The sweeper (``hydra/sweeper=paddy_optuna``, see ``hydra_plugins/paddy_sweeper``) attaches each job to
its trial with one override, ``++optuna={storage:...,study_name:...,trial_number:N,monitor:...,pruner:{...}}``;
:func:`paddy.pipeline.recipe_callbacks` then adds :class:`OptunaPruning`. A pruned run raises
:class:`optuna.TrialPruned` (Lightning stops, nothing else is written) and the sweeper tells the
trial PRUNED. The pruner is built in the job from the same ``pruner`` spec as the sweeper's
(Optuna's pruners keep no state outside the storage).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from lightning import Callback, LightningModule, Trainer
from optuna.trial import FrozenTrial

from paddy.errors import PaddyError

log = logging.getLogger(__name__)

PRUNERS = ("median", "successive_halving", "none")
# The keys of a pruner spec that each pruner takes (the rest of the spec is ignored).
PRUNER_ARGS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
    "none": (),
}


def pruner_spec(spec: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``spec`` (a name or a mapping with ``name``) reduced to its name and the arguments that pruner takes."""
    if spec is None or isinstance(spec, str):
        spec = {"name": spec}
    name = str(spec.get("name") or "none").lower()
    if name in ("null", "nop", "false"):
        name = "none"
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r} (expected one of: {', '.join(PRUNERS)})")
    return {"name": name, **{k: spec[k] for k in PRUNER_ARGS[name] if spec.get(k) is not None}}


def make_pruner(spec: Mapping[str, Any] | str | None) -> optuna.pruners.BasePruner:
    """``median`` (MedianPruner), ``successive_halving`` (SuccessiveHalvingPruner) or ``none``."""
    spec = pruner_spec(spec)
    name = spec.pop("name")
    if name == "median":
        return optuna.pruners.MedianPruner(**spec)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**spec)
    return optuna.pruners.NopPruner()


def open_storage(storage: Any, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> Any:
    """An Optuna storage for ``storage``: SQLAlchemy URLs (``sqlite:///...``,
    ``postgresql+psycopg://user@host:port/db``) become an RDBStorage (SQLite waits up to a minute for
    a lock instead of 5 s, so parallel sweep processes on one machine do not fail); anything else is
    returned as is. Creating the same new database from several processes at once is retried.

    ``heartbeat_interval``/``grace_period`` (seconds) turn on Optuna's heartbeat: a RUNNING trial
    whose heartbeat is older than the grace period is failed by ``optuna.storages.fail_stale_trials``,
    which then calls ``on_stale`` (the sweeper queues its parameters again)."""
    if not isinstance(storage, str):
        return storage
    from sqlalchemy.exc import SQLAlchemyError

    engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
    heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                 "heartbeat_stale_trial_callback": on_stale} if heartbeat_interval else {}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, **heartbeat)
        except SQLAlchemyError as err:  # processes creating the same new database at once: one wins, retry
            if attempt == 4:
                raise StudyStorageError(f"hydra.sweeper.storage={storage}: cannot open the Optuna study database "
                                        f"({_sql_reason(err)}); move a damaged file away to start a new study, "
                                        f"or point hydra.sweeper.storage at another database") from None
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


class StudyStorageError(PaddyError):
    """The Optuna storage of a sweep cannot be opened (a damaged file, an unreachable server)."""


def _sql_reason(err: Exception) -> str:
    """The database's own reason, without SQLAlchemy's SQL echo and background links."""
    original = getattr(err, "orig", None)
    return str(original or err).strip().splitlines()[0]


class OptunaPruning(Callback):
    """Reports ``monitor`` to trial ``trial_number`` of study ``study_name`` after every validation
    epoch (step = the epoch) and raises :class:`optuna.TrialPruned` when the pruner prunes it.

    Before raising it sets the trial's user attr ``pruned_epoch``. Sanity checks and non-finite
    values are not reported. Under DDP rank 0 reports and decides; the decision is broadcast.

    While the trial trains, a thread records its heartbeat in the storage every
    ``heartbeat_interval`` seconds (Optuna's heartbeat, the same table ``study.optimize`` writes): when
    this process dies, on whatever machine, its trial's heartbeat stops and the sweeper fails and
    re-queues it after the grace period.

    Args:
        storage: the study's storage (an SQLAlchemy URL).
        study_name: the study's name.
        trial_number: the trial's number in the study (``trial.number``).
        monitor: the logged metric to report (the study's direction applies to it).
        pruner: a pruner spec (``{"name": "median", "n_startup_trials": 5, ...}``, see
            :func:`make_pruner`); None: report only, never prune.
        heartbeat_interval: seconds between heartbeats; None: no heartbeat.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str = "val/acc",
                 pruner: Mapping[str, Any] | str | None = None, heartbeat_interval: int | None = None):
        self.storage_url = storage
        self.study_name = study_name
        self.trial_number = int(trial_number)
        self.monitor = monitor
        self.pruner = pruner_spec(pruner)
        self.heartbeat_interval = heartbeat_interval
        self._trial: optuna.trial.Trial | None = None
        self._beating: threading.Event | None = None

    @property
    def trial(self) -> optuna.trial.Trial:
        if self._trial is None:
            storage = open_storage(self.storage_url)
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.pruner))
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial  # noqa: B018  (attach now: a wrong storage or trial fails before training)
            log.info("Optuna trial %d of study %r: reporting %s every epoch (pruner: %s)", self.trial_number,
                     self.study_name, self.monitor, self.pruner["name"])
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        if not self.heartbeat_interval or self._beating is not None:
            return
        storage, trial_id, stop = self.trial.study._storage, self.trial._trial_id, threading.Event()

        def beat() -> None:
            while not stop.is_set():
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as err:  # noqa: BLE001 - a database hiccup must not stop training
                    log.warning("Optuna trial %d: could not record its heartbeat (%s)", self.trial_number, err)
                stop.wait(self.heartbeat_interval)

        self._beating = stop
        threading.Thread(target=beat, name=f"optuna-heartbeat-{self.trial_number}", daemon=True).start()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._beating is not None:  # the trial's run ended (finished, pruned or failed)
            self._beating.set()
            self._beating = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune, value = False, None
        if trainer.is_global_zero and self.monitor in trainer.callback_metrics:
            value = float(trainer.callback_metrics[self.monitor])
            if math.isfinite(value):
                self.trial.report(value, step=epoch)
                prune = self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if not prune:
            return
        message = f"Optuna trial {self.trial_number} pruned at epoch {epoch} ({self.monitor}={value})"
        if trainer.is_global_zero:
            self.trial.set_user_attr("pruned_epoch", epoch)
            log.info("%s", message)
        raise optuna.TrialPruned(message)


__all__ = ["PRUNERS", "OptunaPruning", "make_pruner", "open_storage", "pruner_spec"]
