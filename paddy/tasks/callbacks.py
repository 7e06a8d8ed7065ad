"""Callbacks that leave inspectable run artifacts."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from paddy.utils.plots import plot_history

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
        (self.output_dir / "history.json").write_text(json.dumps(self.history, indent=2))
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
        from paddy.data.datamodule import sample_seed

        seed = sample_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
