"""Optuna sweeps (``-m hparams_search=tpe|grid``, sweeper ``paddy_optuna``): resume, failures, pruning, parallel.

Every test runs ``python -m paddy.train -m`` in a subprocess on a tiny synthetic config; the study
is read back from the SQLite file in the sweep directory.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic", "data.source.samples_per_class=16", "data.image_size=32", "data.num_workers=0",
    "backbone.name=test_resnet", "trainer=debug", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "test=false", "logger=none", "callbacks=none",
]


def _command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "paddy.train", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides]


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(sweep_dir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=300)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _trials(sweep_dir: Path, study_name: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials


def test_a_searched_attention_block_gets_only_its_own_knobs(tmp_path: Path) -> None:
    """attention=choice(ca,eca) in a grid: each trial's job passes the knobs of its block only (read from the
    class its composed config names: ca takes reduction, eca kernel_size)."""
    result = _sweep(tmp_path, "hparams_search=grid", "attention=choice(ca,eca)", "optimizer.lr=choice(1e-3)",
                    "optimizer.weight_decay=choice(0)", "attention.reduction=choice(8)",
                    "attention.kernel_size=choice(3)", "data.batch_size=choice(8)", "trainer.max_epochs=1")
    assert result.returncode == 0, _output(result)[-4000:]
    trials = _trials(tmp_path, "grid")
    assert sorted(t.params["attention"] for t in trials) == ["ca", "eca"]
    for trial in trials:
        config = (tmp_path / str(trial.number) / ".hydra" / "config.yaml").read_text()
        block = trial.params["attention"]
        assert ("reduction: 8" in config) == (block == "ca") and ("kernel_size: 3" in config) == (block == "eca")


def test_tpe_sweep_resumes_and_drops_missing_knobs(tmp_path: Path) -> None:
    args = ["hparams_search=tpe", "attention=ca", "hparams_search.n_trials=2"]
    result = _sweep(tmp_path, *args)
    out = _output(result)
    assert result.returncode == 0, out[-4000:]
    assert out.count("attention 'ca' has no knob 'kernel_size': dropped from the search space") == 1
    trials = _trials(tmp_path, "tpe")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert set(trials[0].params) == {"optimizer.lr", "optimizer.weight_decay", "attention.reduction",
                                     "data.batch_size"}
    assert trials[0].params != trials[1].params
    assert all(t.intermediate_values for t in trials)  # val/acc reported every epoch
    assert all((tmp_path / str(t.number) / "metrics.json").is_file() for t in trials)  # job dir = trial number

    # The same command again: the study is complete, nothing runs.
    result = _sweep(tmp_path, *args)
    assert result.returncode == 0, _output(result)[-4000:]
    assert "Launching" not in _output(result)
    assert len(_trials(tmp_path, "tpe")) == 2

    # n_trials=3, killed during the third trial: the re-run marks it interrupted and re-runs its parameters.
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_command(tmp_path, "hparams_search=tpe", "attention=ca", "hparams_search.n_trials=3"),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(t.number == 2 and t.state == TrialState.RUNNING and "optimizer.lr" in t.params
                      for t in _trials(tmp_path, "tpe")):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = _sweep(tmp_path, "hparams_search=tpe", "attention=ca", "hparams_search.n_trials=3")
    out = _output(result)
    assert result.returncode == 0, out[-4000:]
    assert out.count("Launching 1 jobs") == 1
    trials = _trials(tmp_path, "tpe")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs["fail_reason"].startswith("interrupted")
    assert trials[3].params == trials[2].params


def _grid_choice(values: list[float]) -> list[float]:
    """``values`` ordered so that the GridSampler (seed 42, paddy's default seed) runs them in that order."""
    for candidate in itertools.permutations(values):
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({"optimizer.lr": list(candidate)}, seed=42))
        if [study.ask().suggest_categorical("optimizer.lr", list(candidate)) for _ in values] == values:
            return list(candidate)
    raise AssertionError("no order of the grid gives the wanted trial order")


def test_grid_sweep_records_failed_and_pruned_trials(tmp_path: Path) -> None:
    good, still, diverging = 0.01, 1e-9, 1e30  # trained / barely moves (pruned) / NaN (the guard stops it)
    choices = ",".join(repr(v) for v in _grid_choice([good, still, diverging]))
    result = _sweep(tmp_path, "hparams_search=grid", f"optimizer.lr=choice({choices})", "optimizer.weight_decay=0",
                    "data.batch_size=8", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                    "trainer.limit_val_batches=2", "hparams_search.pruner=median",
                    "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
                    "trainer_guard.max_bad_steps=1", "hparams_search.max_failure_rate=0.5")
    out = _output(result)
    assert result.returncode == 0, out[-4000:]
    assert "GridSampler: 3 grid points (optimizer.lr: 3); n_trials = 3" in out
    trials = {t.params["optimizer.lr"]: t for t in _trials(tmp_path, "grid")}
    assert len(trials) == 3
    assert trials[good].state == TrialState.COMPLETE
    assert trials[still].state == TrialState.PRUNED, trials[still]
    assert trials[still].intermediate_values and "pruned_epoch" in trials[still].user_attrs
    assert trials[diverging].state == TrialState.FAIL
    assert trials[diverging].user_attrs["fail_reason"].startswith("NonFiniteLossError: non-finite loss")


def test_sweep_stops_when_too_many_trials_fail(tmp_path: Path) -> None:
    result = _sweep(tmp_path, "hparams_search=grid", "optimizer.lr=choice(1e30,1e31)", "optimizer.weight_decay=0",
                    "data.batch_size=8",
                    "trainer_guard.max_bad_steps=1", "hparams_search.max_failure_rate=0")
    out = _output(result)
    assert result.returncode != 0
    assert "1 of the 1 trials this sweep ran failed, more than max_failure_rate=0.0 x n_trials=2 allows (0)" in out
    assert [t.state for t in _trials(tmp_path, "grid")] == [TrialState.FAIL]


def test_parallel_processes_share_one_study(tmp_path: Path) -> None:
    command = _command(tmp_path, "hparams_search=tpe", "hparams_search.n_trials=4", "data.batch_size=8")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = []
    for path in logs:
        with path.open("w") as log:
            procs.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    for proc, path in zip(procs, logs):
        assert proc.wait(timeout=300) == 0, path.read_text()[-4000:]
    trials = _trials(tmp_path, "tpe")
    done = [t for t in trials if t.state != TrialState.WAITING]  # a trial asked beyond n_trials waits in the queue
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    assert len({t.number for t in done}) == 4
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4
    assert sum(path.read_text().count("Launching 1 jobs") for path in logs) == 4
    assert all((tmp_path / str(t.number) / "metrics.json").is_file() for t in done)


def test_interrupted_trial_resumes_from_its_own_last_checkpoint(tmp_path: Path) -> None:
    """kill -9 of the sweep after the first epoch of trial 0: the re-run's copy of trial 0 runs in job
    directory 0 with resume=auto and continues from its last.ckpt instead of starting at epoch 0."""
    args = ["hparams_search=tpe", "hparams_search.n_trials=1", "trainer.max_epochs=3", "trainer.limit_train_batches=4",
            "callbacks=default", "++callbacks.rich_progress_bar=null", "++callbacks.early_stopping=null"]
    log_path = tmp_path / "killed.log"
    history = tmp_path / "0" / "history.json"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_command(tmp_path, *args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (history.is_file() and history.read_text().count('"epoch"') and
                   (tmp_path / "0" / "checkpoints" / "last.ckpt").is_file()):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = _sweep(tmp_path, *args)
    out = _output(result)
    assert result.returncode == 0, out[-4000:]
    assert f"resume=auto: continuing from {tmp_path / '0' / 'checkpoints' / 'last.ckpt'}" in out
    trials = _trials(tmp_path, "tpe")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert not (tmp_path / "1").exists()  # the copy ran in the interrupted trial's directory
    assert json.loads(history.read_text())["epoch"] == [0, 1, 2]
