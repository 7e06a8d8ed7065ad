"""``hydra/sweeper=paddy_optuna``: hydra-optuna-sweeper's loop made resumable, failure-tolerant and prunable.

A thin subclass of the installed Optuna sweeper (1.4.0rc3); what it changes:

- **Storage**: ``storage: null`` means ``sqlite:///<sweep dir>/optuna.db`` (absolute path); any
  SQLAlchemy URL works. The study is loaded when it exists.
- **n_trials is the study-wide target**: trials that finished (COMPLETE, PRUNED or FAIL) or are
  running in another process count towards it, so re-running the same command runs only the
  missing trials, and N processes running the same command share the work (each asks its own
  trials; a trial asked beyond the target goes back to the queue). ``n_trials: null`` (and the grid
  sampler) means the size of the (discrete) search space; with the grid sampler an explicit
  n_trials larger than the grid is cut to the grid.
- **Interrupted trials**: a trial left RUNNING by a sweep process that is gone (killed; same
  machine: the owner's pid) is marked FAIL with ``fail_reason`` "interrupted: ..." and a copy with
  the same parameters (and grid point) is queued, so it is re-run first; interrupted trials do not
  count towards n_trials. Ctrl-C does the same for the trial in flight before stopping.
  ``stale_trials: all`` treats every RUNNING trial found at start as interrupted (trials of other
  machines or of the stock sweeper: use it only when no other process works on the study).
- **Failures**: a job that raises is told FAIL with the reason in the user attr ``fail_reason``
  and the sweep goes on; it stops with :class:`SweepFailedError` once the trials this process ran
  have failed more than ``floor(max_failure_rate * n_trials)`` times. A non-finite or missing
  objective is a FAIL too.
- **Pruning**: each job gets ``++optuna={storage,study_name,trial_number,monitor,pruner}``;
  :class:`paddy.tasks.pruning.OptunaPruning` reports ``monitor`` every validation epoch and raises
  ``optuna.TrialPruned``, which this sweeper tells as PRUNED. Pruners: ``median``,
  ``successive_halving``, ``none``.
- **Attention knobs**: a searched ``attention.<knob>`` that the composed config's attention block
  lacks (``attention_knobs``) is dropped from the search space with one log line.
- A seeded sampler (but the grid's) samples trial ``N`` with ``seed + N``, so a resumed or
  parallel study does not repeat the random start-up trials of the first run.
- Job ``N`` of the sweep directory is trial ``N`` of the study (stable across resumes).
- **No batch barrier** (``schedule: workers``, the default): with ``n_jobs > 1`` and a launcher that
  runs jobs in parallel (submitit_local, submitit_slurm), the sweep is handed to ``n_jobs`` worker
  jobs through that launcher (one command, one submission); each runs this same sweep command with
  the basic launcher, one trial at a time against the shared storage, so a slot takes its next trial
  the moment its last one ends (pruned or complete). ``schedule: batch`` is Hydra's way: ``n_jobs``
  trials per launch, the next batch once the slowest of them ends.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper import _impl, optuna_sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import FrozenTrial, Trial, TrialState

from paddy.config import override_value
from paddy.errors import reported

log = logging.getLogger(__name__)

OWNER_ATTR = "paddy:owner"  # system attr: {"host", "pid", "start"} of the sweep process that asked the trial
INTERRUPTED_ATTR = "paddy:interrupted"  # system attr: the trial was cut off; a copy was queued
RETRY_ATTR = "paddy:retry_of"  # system attr of the queued copy: the interrupted trial's number
RETRY_REASON_ATTR = "paddy:retry_reason"  # system attr of the queued copy: why the original was cut off
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
WORKERS_DIR = ".workers"  # the worker jobs' own folders in the sweep dir (schedule: workers)
WORKER_ENV = "PADDY_SWEEP_WORKER"  # set in a worker job's sweep process: trials run in it, one at a time


class SweepFailedError(RuntimeError):
    """More trials failed than ``max_failure_rate`` allows."""


@dataclass
class PrunerConf:
    # median | successive_halving | none
    name: str = "median"
    # MedianPruner: prune after this many finished trials, from this epoch on, every interval_steps epochs
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    interval_steps: int = 1
    # SuccessiveHalvingPruner
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class PaddyOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.paddy_sweeper.paddy_sweeper.PaddyOptunaSweeper"
    direction: Any = "maximize"
    # null: sqlite:///<hydra.sweep.dir>/optuna.db
    storage: Any | None = None
    study_name: str | None = "paddy"
    # Study-wide target of finished trials; null: the size of the (discrete) search space
    n_trials: int | None = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.25
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # Metric reported to the trial every validation epoch (for the pruner); same direction as the study
    monitor: str = "val/acc"
    # RUNNING trials found at start: local (those whose sweep process on this machine is gone) | all
    stale_trials: str = "local"
    # Optuna's heartbeat (RDB storages): a trial's job records one every heartbeat_interval seconds; a
    # RUNNING trial without one for grace_period seconds (its worker died, on any machine) is failed
    # and its parameters are queued again. null: off.
    heartbeat_interval: int | None = 60
    grace_period: int | None = 600
    # workers: n_jobs worker jobs, each runs trials one after another (a free slot starts the next trial at
    # once) | batch: n_jobs trials per launch, the next batch after the slowest (Hydra's Optuna sweeper)
    schedule: str = "workers"


ConfigStore.instance().store(group="hydra/sweeper", name="paddy_optuna", node=PaddyOptunaSweeperConf,
                             provider="paddy")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), to tell a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _owner_alive(owner: Any) -> bool | None:
    """Whether the sweep process ``owner`` still runs; None when that cannot be known here."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, TypeError, ValueError):
        return None
    start = _process_start(int(pid))
    return owner.get("start") is None or start is None or start == owner.get("start")


def _counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards n_trials: not those cut off whose parameters were queued again
    (marked interrupted, or, when the heartbeat failed them, named by their copy's ``retry_of``)."""
    retried = {t.system_attrs.get(RETRY_ATTR) for t in trials} - {None}
    return [t for t in trials if not t.system_attrs.get(INTERRUPTED_ATTR) and t.number not in retried]


def _lacks(knobs: tuple[str, ...] | None, param: str) -> bool:
    """Whether ``param`` is ``attention.<k>`` and ``k`` is not among ``knobs`` (None: unknown, keep it)."""
    return knobs is not None and param.startswith("attention.") and param.split(".", 1)[1] not in knobs


def worker_command(argv: Sequence[str], sweep_dir: Path) -> list[str]:
    """The command a worker job runs: this sweep's own command line (``sys.orig_argv``) in this sweep's
    directory (resolved here, so that ``${now:...}`` in it cannot differ)."""
    args = [a for a in argv[1:] if not a.lstrip("+~").startswith("hydra.sweep.dir=")]
    return [sys.executable, *args, f"hydra.sweep.dir={override_value(str(sweep_dir))}"]


def _die_with_parent() -> None:
    """(Linux) SIGTERM this process when its parent, the worker job, dies: no orphan keeps taking trials."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def run_worker(command: list[str], cwd: str, cfg: DictConfig) -> None:
    """The task of a worker job (``schedule: workers``): run ``command``, the sweep itself, to its end."""
    log.info("Sweep worker: %s", " ".join(command))
    env = {**os.environ, WORKER_ENV: "1"}
    code = subprocess.run(command, cwd=cwd, env=env, preexec_fn=_die_with_parent).returncode
    if code != 0:
        raise SweepFailedError(f"its sweep process exited with code {code} (see its output above)")


def _reason(error: Any) -> str:
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    else:
        text = str(error)
    return " ".join(text.split())[:1000]


def _release(ret: JobReturn) -> None:
    """Drop the frames a failed job's exception holds (its model, batches, CUDA tensors)."""
    error = ret._return_value
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        error = error.__cause__ or error.__context__
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class PaddyOptunaSweeperImpl(_impl.OptunaSweeperImpl):
    def __init__(self, sampler: DictConfig, direction: Any, storage: Any | None, study_name: str | None,
                 n_trials: int | None, n_jobs: int, max_failure_rate: float, custom_search_space: str | None,
                 params: DictConfig | None, pruner: DictConfig | dict | str | None, monitor: str,
                 stale_trials: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 schedule: str = "workers") -> None:
        super().__init__(None, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                         custom_search_space, params)
        self.sampler_config: dict[str, Any] = (OmegaConf.to_container(sampler, resolve=True)
                                               if isinstance(sampler, DictConfig) else dict(sampler))
        if isinstance(pruner, DictConfig):
            pruner = OmegaConf.to_container(pruner, resolve=True)
        self.pruner = pruner
        self.monitor = monitor
        if stale_trials not in ("local", "all"):
            raise ValueError(f"hydra.sweeper.stale_trials={stale_trials!r} (expected local or all)")
        self.stale_trials = stale_trials
        if heartbeat_interval is not None and (int(heartbeat_interval) < 1 or grace_period is None
                                               or int(grace_period) <= int(heartbeat_interval)):
            raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}, grace_period={grace_period} "
                             f"(expected an interval >= 1 s and a longer grace period, or heartbeat_interval=null)")
        self.heartbeat_interval = None if heartbeat_interval is None else int(heartbeat_interval)
        self.grace_period = None if grace_period is None else int(grace_period)
        if n_trials is not None and int(n_trials) < 0:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} (expected >= 0, or null)")
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_jobs={n_jobs} (expected >= 1)")
        if schedule not in ("workers", "batch"):
            raise ValueError(f"hydra.sweeper.schedule={schedule!r} (expected workers or batch)")
        self.schedule = schedule
        self.knobs_of: dict[str, tuple[str, ...] | None] = {}  # attention choice -> its keys (_choice_knobs)

    # ------------------------------------------------------------------ set-up
    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if os.environ.get(WORKER_ENV):  # a worker job of a schedule-workers sweep: its trials run here
            self.n_jobs = 1
            here = copy.deepcopy(config)
            with read_write(here.hydra), open_dict(here.hydra):
                here.hydra.launcher = ConfigStore.instance().load("hydra/launcher/basic.yaml").node
            self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                    task_function=task_function, config=here)
            # its jobs compose from the sweep's own config (Hydra checks that they keep its hydra.launcher)
            self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    @property
    def is_grid(self) -> bool:
        return self.sampler_config.get("_target_") == "optuna.samplers.GridSampler"

    def _make_sampler(self, position: int, grid: dict[str, list[Any]] | None) -> optuna.samplers.BaseSampler:
        config = dict(self.sampler_config)
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + position
        sampler = instantiate(config, _execution_whitelist_=_SAMPLER_WHITELIST)
        if isinstance(sampler, functools.partial):  # GridSampler: the search space comes now
            sampler = sampler(grid)
        return sampler

    def _drop_missing_knobs(self, space: dict[str, Any]) -> None:
        """Remove ``attention.<knob>`` parameters the configured attention block does not take."""
        if "attention" in space:
            return  # the block itself is searched: handled per trial (_trial_overrides)
        knobs = self._block_knobs(OmegaConf.select(self.config, "attention"))
        missing = [name for name in space if _lacks(knobs, name)]
        if not missing:
            return
        for name in missing:
            del space[name]
        log.info("attention %r has no knob%s %s: dropped from the search space",
                 OmegaConf.select(self.config, "attention.name"), "s" if len(missing) > 1 else "",
                 ", ".join(repr(name.split(".", 1)[1]) for name in missing))

    @staticmethod
    def _block_knobs(attention: Any) -> tuple[str, ...] | None:
        """The keys an attention config may set: paddy's own and the keyword arguments of the class its
        ``_target_`` names; None when that is not known here (the job then reports what is wrong)."""
        from paddy.models.attention import RESERVED, attention_knobs

        target = attention.get("_target_") if isinstance(attention, DictConfig) else None
        try:
            return RESERVED + attention_knobs(str(target)) if target else None
        except Exception:  # noqa: BLE001 - a class that cannot be imported here
            return None

    def _choice_knobs(self, choice: str, job: Sequence[str]) -> tuple[str, ...] | None:
        """``_block_knobs`` of ``attention=<choice>``, from the config the trial's own overrides ``job``
        compose to (without its ``attention.<knob>`` values, which that block may lack)."""
        if choice not in self.knobs_of:
            composed = self.hydra_context.config_loader.load_sweep_config(
                self.config, [o for o in job if not o.startswith("attention.")])
            self.knobs_of[choice] = self._block_knobs(OmegaConf.select(composed, "attention"))
        return self.knobs_of[choice]

    def _target_trials(self, space: dict[str, Any], grid: dict[str, list[Any]] | None) -> int:
        if grid is not None:
            size = math.prod(len(v) for v in grid.values())
            n_trials = size if self.n_trials is None else min(int(self.n_trials), size)
            log.info("GridSampler: %d grid points (%s); n_trials = %d", size,
                     " x ".join(f"{k}: {len(v)}" for k, v in grid.items()) or "no parameters", n_trials)
            return n_trials
        if self.n_trials is not None:
            return int(self.n_trials)
        try:
            return math.prod(len(self._to_grid_sampler_choices(d)) for d in space.values())
        except (ValueError, AssertionError) as err:
            raise ValueError("hydra.sweeper.n_trials=null needs a discrete search space (choice or range "
                             "parameters only); set hparams_search.n_trials") from err

    def _open_study(self, directions: list[str], grid: dict[str, list[Any]] | None) -> optuna.Study:
        from paddy.tasks.pruning import make_pruner, open_storage

        if self.storage is None:
            sweep_dir = Path(str(self.sweep_dir)).resolve()
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
        # the storage object (Optuna's public RDBStorage API) for trial bookkeeping beyond ask/tell
        self.db = storage = open_storage(self.storage, self.heartbeat_interval, self.grace_period,
                                         self._requeue_stale)
        return optuna.create_study(study_name=self.study_name, storage=storage, sampler=self._make_sampler(0, grid),
                                   pruner=make_pruner(self.pruner), directions=directions, load_if_exists=True)

    # ------------------------------------------------------------------ trial bookkeeping
    def _interrupt(self, study: optuna.Study, trials: Sequence[Trial | FrozenTrial], reason: str) -> None:
        """Mark ``trials`` FAIL (interrupted, not counted) and queue a copy of each with the same parameters."""
        storage = self.db
        for trial in trials:
            frozen = storage.get_trial(trial._trial_id)
            if frozen.state != TrialState.RUNNING:
                continue
            try:
                storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
                storage.set_trial_system_attr(frozen._trial_id, INTERRUPTED_ATTR, True)
                if not storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process finished it meanwhile
            self._queue_again(study, frozen, reason)

    def _requeue_stale(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """Optuna's heartbeat callback: ``frozen`` was failed for want of a heartbeat (its worker died).
        A finished trial takes no more attributes: its copy records why (``retry_reason``)."""
        self._queue_again(study, frozen, f"interrupted: no heartbeat for {self.grace_period} s (its worker died)")

    @staticmethod
    def _queue_again(study: optuna.Study, frozen: FrozenTrial, reason: str) -> None:
        system_attrs = {k: v for k, v in frozen.system_attrs.items() if not k.startswith("paddy:")}
        system_attrs[RETRY_ATTR] = frozen.number
        system_attrs[RETRY_REASON_ATTR] = reason
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=frozen.params,
                                                  distributions=frozen.distributions, system_attrs=system_attrs))
        log.warning("Trial %d %s: marked FAIL (not counted); its parameters are queued again", frozen.number, reason)

    def _find_dead(self, study: optuna.Study) -> None:
        """Fail and re-queue RUNNING trials whose worker is gone: on this machine by its pid, anywhere
        by Optuna's heartbeat."""
        self._reclaim_stale(study, quiet=True)
        if self.heartbeat_interval:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)

    def _reclaim_stale(self, study: optuna.Study, quiet: bool = False) -> None:
        stale, elsewhere = [], []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            alive = _owner_alive(trial.system_attrs.get(OWNER_ATTR))
            if alive is False or (alive is None and self.stale_trials == "all"):
                stale.append(trial)
            else:
                elsewhere.append(trial)
        if stale:
            self._interrupt(study, stale, "interrupted: its sweep process is gone")
        if elsewhere and not quiet:
            log.info("Trials %s are running in another process: counted as in flight (if that process is gone, "
                     "re-run with hydra.sweeper.stale_trials=all)", [t.number for t in elsewhere])

    def _can_watch(self, running: Sequence[FrozenTrial]) -> bool:
        """Whether this process would notice the death of each running trial's worker: by Optuna's heartbeat,
        or by the worker's process id on this machine (otherwise waiting for them could last for ever)."""
        return bool(self.heartbeat_interval) or all(_owner_alive(t.system_attrs.get(OWNER_ATTR)) is not None
                                                    for t in running)

    def _surplus(self, study: optuna.Study, trial: Trial, n_trials: int) -> bool:
        """Whether ``n_trials`` counted trials (finished, running or queued) come before ``trial``."""
        ahead = [t for t in _counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
        return len(ahead) >= n_trials

    def _ask(self, study: optuna.Study, size: int, n_trials: int, grid: dict[str, list[Any]] | None) -> list[Trial]:
        asked: list[Trial] = []
        for _ in range(size):
            trial = study.ask()
            self.db.set_trial_system_attr(trial._trial_id, OWNER_ATTR, self.owner)
            if self._surplus(study, trial, n_trials):
                self.db.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                log.info("Trial %d: the study already has %d trials finished or in flight: left in the queue",
                         trial.number, n_trials)
                break
            asked.append(trial)
        return asked

    def _trial_overrides(self, trial: Trial, overrides: Sequence[str]) -> list[str]:
        overrides = list(overrides)
        attention = trial.params.get("attention")
        if attention is not None:  # the attention block is searched: leave out the knobs this one lacks
            knobs = self._choice_knobs(str(attention), overrides)
            overrides = [o for o in overrides if not _lacks(knobs, o.split("=", 1)[0])]
        overrides += self._rerun_overrides(trial)
        if isinstance(self.storage, str):
            attach = {"storage": self.storage, "study_name": trial.study.study_name, "trial_number": trial.number,
                      "monitor": self.monitor, "pruner": self.pruner_spec,
                      "heartbeat_interval": self.heartbeat_interval}
            overrides.append(f"++optuna={override_value(attach)}")
        return overrides

    def _rerun_overrides(self, trial: Trial) -> list[str]:
        """A queued copy of an interrupted trial runs in that trial's job directory with ``resume=auto``:
        it continues from the interrupted run's ``last.ckpt`` instead of starting again at epoch 0."""
        retry_of = self.db.get_trial(trial._trial_id).system_attrs.get(RETRY_ATTR)
        sweep = OmegaConf.to_container(self.config.hydra.sweep, resolve=False) if self.config is not None else {}
        pattern = sweep.get("subdir")  # unresolved: ${hydra.job.num} still in it
        if retry_of is None or not isinstance(pattern, str) or "${hydra.job.num}" not in pattern:
            return []
        rerun = [f"hydra.sweep.subdir={override_value(pattern.replace('${hydra.job.num}', str(retry_of)))}"]
        return rerun + (["resume=auto"] if "resume" in self.config else [])  # (a task with paddy's resume option)

    def _outcome(self, trial: Trial, ret: JobReturn,
                 n_objectives: int) -> tuple[TrialState, list[float] | None, str | None]:
        if ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            try:
                values = [float(value)] if n_objectives == 1 else [float(v) for v in value]
            except (TypeError, ValueError):
                return TrialState.FAIL, None, f"the job returned {value!r}, not {n_objectives} number(s)"
            if len(values) != n_objectives:
                return TrialState.FAIL, None, f"the job returned {len(values)} values for {n_objectives} objectives"
            if not all(math.isfinite(v) for v in values):
                return TrialState.FAIL, None, f"non-finite objective {values}"
            return TrialState.COMPLETE, values, None
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned) or "pruned_epoch" in self.db.get_trial(
                trial._trial_id).user_attrs:
            return TrialState.PRUNED, None, None
        return TrialState.FAIL, None, _reason(error)

    def _record(self, study: optuna.Study, trial: Trial, ret: JobReturn, n_objectives: int) -> TrialState:
        state, values, reason = self._outcome(trial, ret, n_objectives)
        _release(ret)
        if self.db.get_trial(trial._trial_id).state.is_finished():
            log.warning("Trial %d was finished by another process meanwhile", trial.number)
            return self.db.get_trial(trial._trial_id).state
        if reason is not None:
            trial.set_user_attr("fail_reason", reason)
        try:
            study.tell(trial, state=state, values=values)
        except RuntimeError as err:  # GridSampler calls study.stop() once the grid is done
            if "Study.stop" not in str(err):
                raise
        if state == TrialState.COMPLETE:
            log.info("Trial %d COMPLETE: %s; %s", trial.number, values if len(values) > 1 else values[0],
                     trial.params)
        elif state == TrialState.PRUNED:
            log.info("Trial %d PRUNED at epoch %s; %s", trial.number,
                     self.db.get_trial(trial._trial_id).user_attrs.get("pruned_epoch"), trial.params)
        else:
            log.warning("Trial %d FAIL: %s; %s", trial.number, reason, trial.params)
        return state

    def _launch(self, study: optuna.Study, trials: list[Trial], overrides: list[list[str]]) -> list[JobReturn]:
        """Launch the jobs as job numbers = trial numbers; on Ctrl-C mark the trials in flight interrupted."""
        numbers = [t.number for t in trials]
        try:
            if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
                return list(self.launcher.launch(overrides, initial_job_idx=numbers[0]))
            return [ret for number, job in zip(numbers, overrides)
                    for ret in self.launcher.launch([job], initial_job_idx=number)]
        except Exception as err:  # the launcher itself failed: every trial of the batch fails
            return [JobReturn(status=JobStatus.FAILED, _return_value=err) for _ in trials]
        except BaseException as err:
            self._interrupt(study, trials, f"interrupted: {type(err).__name__}")
            raise

    # ------------------------------------------------------------------ the loop
    def sweep(self, arguments: list[str]) -> None:
        from paddy.tasks.pruning import pruner_spec

        assert self.config is not None and self.launcher is not None
        self.owner = _owner()
        self.pruner_spec = pruner_spec(self.pruner)
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config()
        params_conf.extend(arguments)
        space, fixed_params, fixed_overrides = _impl.create_params_from_overrides(params_conf)
        for name in fixed_params:
            space.pop(name, None)
        self._drop_missing_knobs(space)
        grid = {name: list(self._to_grid_sampler_choices(d)) for name, d in space.items()} if self.is_grid else None
        n_trials = self._target_trials(space, grid)
        directions = self._get_directions()
        with reported(log):  # a damaged study database: one line, exit 2
            study = self._open_study(directions, grid)
        self._reclaim_stale(study)
        self._find_dead(study)

        def counts() -> tuple[list[FrozenTrial], list[FrozenTrial]]:
            counted = _counted(study.get_trials(deepcopy=False))
            return ([t for t in counted if t.state in FINISHED], [t for t in counted if t.state == TrialState.RUNNING])

        finished, running = counts()
        log.info("Study %r (%s) in %s: %d of n_trials=%d finished, %d running elsewhere; sampler %s, pruner %s; "
                 "search space: %s", study.study_name, "/".join(directions), self.storage, len(finished), n_trials,
                 len(running), self.sampler_config.get("_target_", "?").rsplit(".", 1)[-1], self.pruner_spec["name"],
                 ", ".join(space) or "none")
        # (the worker jobs compose with the sweep's fixed overrides, as trials do)
        fixed = [f"{k}={v}" for k, v in fixed_params.items()] + list(fixed_overrides)
        if not (self._hand_to_workers() and self._run_workers(fixed)):
            self._run_here(study, counts, (space, fixed_params, fixed_overrides), grid, n_trials, len(directions))
        self._save_results(study, n_trials, directions)

    def _hand_to_workers(self) -> bool:
        """Whether this sweep runs as ``n_jobs`` worker jobs (schedule ``workers`` and a parallel launcher)."""
        if self.schedule != "workers" or int(self.n_jobs) < 2:
            return False
        if type(self.launcher).__name__ == "BasicLauncher":
            log.warning("hydra.sweeper.n_jobs=%d, but hydra/launcher=basic runs one job at a time: trials run one "
                        "after another here (use hydra/launcher=submitit_local or submitit_slurm for %d in flight)",
                        int(self.n_jobs), int(self.n_jobs))
            return False
        return True

    def _run_workers(self, fixed: list[str]) -> bool:
        """Launch ``n_jobs`` worker jobs through the configured launcher; each runs this sweep's command with
        the basic launcher, trial after trial against the shared storage, until the study has n_trials.
        False when a worker job failed or was killed: this process then carries on with what is left."""
        n = int(self.n_jobs)
        sweep_dir = Path(str(self.sweep_dir)).resolve()
        command = worker_command(sys.orig_argv, sweep_dir)
        cwd = str(self.config.hydra.runtime.cwd)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, config=self.config,
            task_function=functools.partial(run_worker, command, cwd))
        log.info("Schedule 'workers': %d worker jobs through %s, each taking the next trial as soon as its last one "
                 "ends; logs in %s", n, type(launcher).__name__, sweep_dir / WORKERS_DIR)
        overrides = [[*fixed, f"hydra.sweep.subdir={override_value(f'{WORKERS_DIR}/{i}')}"] for i in range(n)]
        try:
            failed = [f"worker {i}: {_reason(ret._return_value)}" for i, ret in
                      enumerate(launcher.launch(overrides, initial_job_idx=0)) if ret.status != JobStatus.COMPLETED]
        except Exception as err:  # noqa: BLE001 - a job killed or lost (the launcher raises at the first one)
            failed = [_reason(err)]
        if failed:
            log.warning("A worker job ended badly (%s): this process carries on with the trials left",
                        "; ".join(failed)[:2000])
        return not failed

    def _run_here(self, study: optuna.Study, counts: Any, params: tuple, grid: dict[str, list[Any]] | None,
                  n_trials: int, n_objectives: int) -> None:
        """Ask, launch (``n_jobs`` at once) and tell trials until the study has n_trials."""
        allowed = math.floor(self.max_failure_rate * n_trials + 1e-9)
        # (not the GridSampler: its seed fixes the order of the grid points, the same for every trial)
        seeded = self.sampler_config.get("seed") is not None and not self.is_grid
        failures: list[tuple[int, str]] = []
        ran = 0
        while True:
            self._find_dead(study)  # trials of workers that died meanwhile go back to the queue
            finished, running = counts()
            to_go = n_trials - len(finished) - len(running)
            if to_go <= 0 and running and self._can_watch(running):
                time.sleep(1)  # the rest runs elsewhere: wait (a cheap query), take over if a worker dies
                continue
            if to_go <= 0:
                break
            trials = self._ask(study, min(int(self.n_jobs), to_go), n_trials, grid)
            if not trials:
                break
            overrides = []
            for trial in trials:
                if seeded:  # parameters are sampled now: with seed + trial number
                    study.sampler = self._make_sampler(trial.number, grid)
                [job] = self._configure_trials([trial], *params)
                overrides.append(self._trial_overrides(trial, job))
            for trial, ret in zip(trials, self._launch(study, trials, overrides)):
                ran += 1
                if self._record(study, trial, ret, n_objectives) == TrialState.FAIL:
                    failures.append((trial.number, self.db.get_trial(trial._trial_id).user_attrs.get(
                        "fail_reason", "?")))
            if len(failures) > allowed:
                last = "; ".join(f"trial {n}: {r}" for n, r in failures[-3:])
                raise SweepFailedError(
                    f"{len(failures)} of the {ran} trials this sweep ran failed, more than max_failure_rate="
                    f"{self.max_failure_rate} x n_trials={n_trials} allows ({allowed}). Last failures: {last}. "
                    "Fix the cause (or raise hparams_search.max_failure_rate) and re-run the same command: "
                    "the study resumes.")

    def _save_results(self, study: optuna.Study, n_trials: int, directions: list[str]) -> None:
        trials = _counted(study.get_trials(deepcopy=False))
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in FINISHED}
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": self.storage,
                                   "n_trials": n_trials, **states}
        log.info("Study %r: %s", study.study_name, ", ".join(f"{v} {k}" for k, v in states.items()))
        if states["complete"] == 0:
            log.warning("No trial completed")
        elif len(directions) < 2:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best trial %d: value %s, parameters %s", best.number, best.value, best.params)
        else:
            results["solutions"] = [{"trial": t.number, "params": t.params, "values": t.values}
                                    for t in study.best_trials]
            log.info("Number of Pareto solutions: %d", len(results["solutions"]))
        Path(str(self.sweep_dir)).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), Path(str(self.sweep_dir)) / "optimization_results.yaml")


class PaddyOptunaSweeper(optuna_sweeper.OptunaSweeper):
    """The Hydra plugin (``hydra/sweeper=paddy_optuna``); the work is done by :class:`PaddyOptunaSweeperImpl`."""

    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None,
                 n_trials: int | None, n_jobs: int, max_failure_rate: float, custom_search_space: str | None,
                 params: DictConfig | None, pruner: Any = "median", monitor: str = "val/acc",
                 stale_trials: str = "local", heartbeat_interval: int | None = 60,
                 grace_period: int | None = 600, schedule: str = "workers") -> None:
        self.sweeper = PaddyOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                              max_failure_rate, custom_search_space, params, pruner, monitor,
                                              stale_trials, heartbeat_interval, grace_period, schedule)


__all__ = ["PaddyOptunaSweeper", "PaddyOptunaSweeperConf", "PaddyOptunaSweeperImpl", "PrunerConf",
           "SweepFailedError", "run_worker", "worker_command"]
