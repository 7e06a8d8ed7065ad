"""The README's runs on the real default dataset (installed by `make install` / `make data`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN_FILES = ["metrics.json", "history.json", "training_plot.png", ".hydra/config.yaml", "checkpoints/last.ckpt"]


def paddy_train(*args: str, cwd: Path, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PADDY_CACHE_DIR": str(cwd / "cache")}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "paddy.train", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result, time.perf_counter() - started


def check_run_dir(run: Path) -> dict:
    for name in RUN_FILES:
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("model_name", "valid_acc", "valid_loss", "valid_f1", "train_acc", "train_loss", "best_epoch",
                "num_params", "size_mb", "ckpt_path", "test_acc", "test_loss", "test_f1"):
        assert metrics.get(key) is not None, key
    assert Path(metrics["ckpt_path"]).is_file()
    history = json.loads((run / "history.json").read_text())
    for key in ("train_loss", "valid_loss", "train_acc", "valid_acc", "valid_f1", "learning_rates", "epoch_time"):
        assert len(history[key]) == metrics["epochs_run"], key
    return metrics


def test_quick_fashion_mnist_run(tmp_path: Path):
    """`python -m paddy.train trainer.max_epochs=1 data.train_limit=2000 data.valid_limit=500`."""
    run = tmp_path / "quick"
    result, seconds = paddy_train("trainer.max_epochs=1", "data.train_limit=2000", "data.valid_limit=500",
                                  f"hydra.run.dir={run}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run_dir(run)
    assert metrics["split_sizes"] == {"train": 2000, "val": 500, "test": 10000}
    # 15 steps from scratch are too few for the evaluation (BatchNorm running statistics) to be
    # meaningful, but training itself must already beat chance (0.1).
    assert metrics["train_acc"] > 0.2, metrics
    print(f"quick run: {seconds:.0f} s, test_acc {metrics['test_acc']:.4f}")


@pytest.mark.slow
def test_default_run_reaches_the_published_range(tmp_path: Path):
    """`python -m paddy.train` with no arguments: the full default recipe (several minutes)."""
    run = tmp_path / "default"
    result, seconds = paddy_train(f"hydra.run.dir={run}", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run_dir(run)
    assert metrics["test_acc"] >= 0.88, metrics
    print(f"default run: {seconds:.0f} s, test_acc {metrics['test_acc']:.4f}")


def test_multirun_sweeps_in_multirun_dir(tmp_path: Path):
    result, _ = paddy_train("-m", "data=synthetic", "backbone.name=test_resnet", "data.image_size=32",
                            "trainer=debug", "optimizer.lr=1e-3,3e-3", "++callbacks.rich_progress_bar=null",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert metrics["optimized_metric"] == "val/acc_best"
    lrs = {json.loads((tmp_path / "sweep" / j / "history.json").read_text())["learning_rates_by_group"]["backbone"][0]
           for j in ("0", "1")}
    assert len(lrs) == 2


def test_cbam_ablation_runs_four_variants_and_reports_them(tmp_path: Path):
    sweep = tmp_path / "ablation"
    result, _ = paddy_train("-m", "experiment=cbam_ablation", "data=synthetic", "backbone.name=test_resnet",
                            "data.image_size=32", "trainer=debug", "trainer.max_epochs=1",
                            "++callbacks.rich_progress_bar=null", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 4
    metrics = [json.loads(p.read_text()) for p in jobs]
    # none / channel-only / spatial-only / full CBAM: four different networks on one backbone and seed.
    assert len({m["num_params"] for m in metrics}) == 4
    assert {m["backbone"] for m in metrics} == {"test_resnet"}
    configs = [(p.parent / ".hydra" / "config.yaml").read_text() for p in jobs]
    assert sum("channel: false" in c for c in configs) == 1 and sum("spatial: false" in c for c in configs) == 1
    report = subprocess.run([sys.executable, "-m", "paddy.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    board = (sweep / "leaderboard.md").read_text()
    assert "cbam (channel only)" in board and "cbam (spatial only)" in board
