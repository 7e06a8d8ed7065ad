"""A sweep trial that only takes time: ``epochs`` epochs of ``epoch_s`` seconds, reporting ``x`` to its
Optuna trial after each (so the median pruner stops the low ones early), and recording in the trial
when it really ran (user attrs ``ran_from``/``ran_to``, Unix time).

It is the task of ``benchmarks/sweep_slots.py`` and of the scheduling tests: trials of different lengths
through paddy's real sweeper and Hydra's real launchers, without the CPU contention of training four
models on two cores (a slot here stands for a GPU that one trial keeps busy). It imports neither torch
nor Lightning, so a job starts in about a second.
"""

from __future__ import annotations

import time

import hydra
import optuna
from omegaconf import DictConfig


def attach(spec: DictConfig) -> optuna.trial.Trial:
    """The trial this job runs, from the sweeper's ``++optuna={storage,study_name,trial_number,...}``."""
    pruner = optuna.pruners.NopPruner() if spec.pruner.name == "none" else optuna.pruners.MedianPruner(
        n_startup_trials=int(spec.pruner.n_startup_trials), n_warmup_steps=int(spec.pruner.n_warmup_steps))
    study = optuna.load_study(study_name=spec.study_name, storage=spec.storage, pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(spec.trial_number))
    return optuna.trial.Trial(study, trial_id)


@hydra.main(config_path="conf", config_name="slot_trial")
def main(cfg: DictConfig) -> float:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = attach(cfg.optuna)
    trial.set_user_attr("ran_from", time.time())
    try:
        for epoch in range(int(cfg.epochs)):
            time.sleep(float(cfg.epoch_s))
            trial.report(float(cfg.x), step=epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    finally:
        trial.set_user_attr("ran_to", time.time())
    return float(cfg.x)


if __name__ == "__main__":
    main()
