"""Callbacks that leave inspectable run artifacts."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from paddy.artifacts import HISTORY_FILE
from paddy.errors import PaddyError
from paddy.utils.plots import plot_history
from paddy.utils.runtime import derived_seed

log = logging.getLogger(__name__)

# history.json series -> the logged metric each one reads.
HISTORY_METRICS = {
    "train_loss": "train/loss", "train_acc": "train/acc", "train_f1": "train/f1",
    "valid_loss": "val/loss", "valid_acc": "val/acc", "valid_f1": "val/f1",
}


class RunHistory(Callback):
    """Records per-epoch losses, metrics, learning rates and epoch times.

    After every training epoch it rewrites ``history.json`` and ``training_plot.png`` in
    ``output_dir``, so a run that crashes or is killed keeps the history of its finished epochs.
    Its state travels in checkpoints, so a resumed run continues the same history.
    """

    def __init__(self, output_dir: str | Path, plot: bool = True):
        self.output_dir = Path(output_dir)
        self.plot = plot
        self.history: dict[str, Any] = self._empty()
        self._epoch_start = 0.0

    @staticmethod
    def _empty() -> dict[str, Any]:
        series = {"epoch": [], **{k: [] for k in HISTORY_METRICS}, "learning_rates": [],
                  "learning_rates_by_group": {}, "epoch_time": []}
        return series

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = self.history
        row["epoch"].append(trainer.current_epoch)
        for key, name in HISTORY_METRICS.items():
            value = metrics.get(name)
            row[key].append(float(value) if value is not None else None)
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        for i, group in enumerate(groups):
            name = group.get("name", f"group{i}")
            if name.endswith("_no_decay"):
                continue
            row["learning_rates_by_group"].setdefault(name, []).append(float(group["lr"]))
        row["learning_rates"].append(float(groups[0]["lr"]) if groups else None)
        row["epoch_time"].append(round(time.perf_counter() - self._epoch_start, 3))
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / HISTORY_FILE).write_text(json.dumps(self.history, indent=2))
        if self.plot and self.history["epoch"]:
            try:
                plot_history(self.history, self.output_dir / "training_plot.png")
            except Exception as err:  # a plotting problem must never stop training
                log.warning("could not draw training_plot.png: %s", err)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict.get("history", self._empty())


class EpochSeed(Callback):
    """Seeds Python, NumPy and torch (CPU and CUDA) at the start of every training epoch from
    (run seed, epoch, global rank).

    Dropout masks, Mixup/CutMix draws and anything else that uses the global generators are then a
    function of the epoch rather than of everything drawn since the process started: a run killed
    in epoch k and resumed from the checkpoint of epoch k-1 draws what the uninterrupted run drew.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed = derived_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class RunPreempted(PaddyError):
    """The run saved a checkpoint and requeued its SLURM job; the requeued job continues from it."""

    exit_code = 0


class SlurmRequeue(Callback):
    """On SLURM's requeue signal (SIGUSR1, e.g. ``#SBATCH --signal=USR1@90``): save a checkpoint on
    every rank at the same step, requeue the job (``scontrol requeue``), stop.

    Lightning's own handler does this inside the signal handler; under DDP that starts a collective
    (the checkpoint's barrier) wherever each rank happened to be, and a rank blocked in another
    collective never gets there: the ranks deadlock and the job is never requeued (seen on a real
    SLURM cluster, 3 times in 33 signals). Here the handler only sets a flag. Every
    ``check_every_n_steps`` training steps (1 on a CPU, 20 on a GPU) the ranks agree, in one
    all-reduce, whether any was signalled; if so they save ``<run dir>/hpc_ckpt_<n>.ckpt`` together
    (the file Lightning's handler writes, which ``resume=auto`` picks up), rank 0 requeues the job
    and the run ends with :class:`RunPreempted` (exit 0, no metrics.json).
    Installed before Lightning registers its handlers, so Lightning leaves SIGUSR1 to it.
    """

    def __init__(self, check_every_n_steps: int | None = None):
        self.check_every_n_steps = check_every_n_steps
        self._signalled = False
        self._steps = 0
        self._interval = 1
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is None:
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        default = 1 if pl_module.device.type == "cpu" else 20
        self._interval = self.check_every_n_steps or default

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._steps += 1
        if self._steps % self._interval:
            return
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        path = _next_hpc_checkpoint(Path(trainer.default_root_dir))
        trainer.save_checkpoint(path)
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID", "")
        if trainer.is_global_zero:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode != 0:
                log.warning("scontrol requeue %s failed: %s", job, (done.stderr or done.stdout).strip())
        raise RunPreempted(f"SLURM asked to stop: saved {path} at epoch {trainer.current_epoch}, step "
                           f"{trainer.global_step} and requeued job {job}; the requeued job continues from it "
                           f"(resume=auto)")


def _next_hpc_checkpoint(folder: Path) -> Path:
    numbers = [int(p.stem.rsplit("_", 1)[-1]) for p in folder.glob("hpc_ckpt_*.ckpt")
               if p.stem.rsplit("_", 1)[-1].isdigit()]
    return folder / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"
