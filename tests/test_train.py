"""Real fits of a tiny model on every layout, the CLI in a subprocess, and config composition."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, run_module
from omegaconf import OmegaConf

from paddy.config import compose_config, config_dir
from paddy.pipeline import train

REPO = Path(__file__).resolve().parents[1]
HISTORY_KEYS = {"train_loss", "valid_loss", "train_acc", "valid_acc", "valid_f1", "learning_rates", "epoch_time"}
METRICS_KEYS = {"model_name", "valid_acc", "valid_loss", "valid_f1", "train_acc", "train_loss", "best_epoch",
                "num_params", "size_mb", "ckpt_path"}


def tiny_config(tmp_path: Path, *overrides: str):
    return compose_config([*TINY, f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}",
                           *overrides])


def assert_run_dir(run: Path, epochs: int, with_test: bool) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert METRICS_KEYS <= set(metrics)
    assert ("test_acc" in metrics) == with_test
    history = json.loads((run / "history.json").read_text())
    assert HISTORY_KEYS <= set(history)
    assert all(len(history[k]) == epochs for k in HISTORY_KEYS)
    assert (run / "training_plot.png").stat().st_size > 10_000
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["ckpt_path"]).is_file() and Path(metrics["ckpt_path"]).parent == run / "checkpoints"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    return metrics


LAYOUTS = {
    "paddy": ("paddy_root", ["data=paddy", "data.val_fraction=0.25", "data.test_fraction=0.25"]),
    "metadata_csv": ("metadata_root", ["data=metadata_csv"]),
    "imagefolder": ("imagefolder_root", ["data=imagefolder"]),
    "imagefolder_flat": ("flat_imagefolder_root", ["data=imagefolder", "data.val_fraction=0.25"]),
    "fashion_mnist": ("fashion_mnist_root", ["data=fashion_mnist"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fit_on_each_layout(layout: str, tmp_path: Path, request):
    fixture, overrides = LAYOUTS[layout]
    root = request.getfixturevalue(fixture)
    cfg = tiny_config(tmp_path, *overrides, f"data.root={root}")
    metrics = train(cfg)
    run = tmp_path / "run"
    assert_run_dir(run, epochs=2, with_test=True)
    assert metrics["optimized_metric"] == "val/acc_best"
    assert 0.0 <= metrics["optimized_value"] <= 1.0
    saved = OmegaConf.load(run / "tensorboard" / "hparams.yaml")
    assert saved.config.data.root == str(root)


def test_a_real_fit_learns(tmp_path: Path):
    cfg = tiny_config(tmp_path, "data=synthetic", "trainer.max_epochs=4", "optimizer.lr=3e-3",
                      "data.transforms.train.ColorJitter=null")
    metrics = train(cfg)
    assert metrics["val_acc_best"] >= 0.9, metrics
    assert metrics["test_acc"] >= 0.9, metrics
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_resume_from_last_checkpoint_continues_the_run(tmp_path: Path):
    train(tiny_config(tmp_path, "data=synthetic", "trainer.max_epochs=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = train(tiny_config(tmp_path, "data=synthetic", "trainer.max_epochs=2", f"ckpt_path={last}"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["epoch"] == [0, 1]
    assert metrics["epochs_run"] == 2


def test_mlp_head_and_other_optimizers_train(tmp_path: Path):
    cfg = tiny_config(tmp_path, "data=synthetic", "trainer.max_epochs=1", "model.head.hidden=[32,16]",
                      "optimizer=sgd", "scheduler=none", "logger=csv", "callbacks=none")
    metrics = train(cfg)
    assert metrics["epochs_run"] == 1
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


def test_no_logger_still_trains(tmp_path: Path):
    metrics = train(tiny_config(tmp_path, "data=synthetic", "trainer.max_epochs=1", "logger=none"))
    assert metrics["epochs_run"] == 1 and not (tmp_path / "run" / "tensorboard").exists()


# --------------------------------------------------------------------------- configs


def _options() -> list[tuple[str, str]]:
    root = config_dir()
    pairs = []
    for group_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("[!_]*.yaml")):  # conf/data/_base.yaml: what the options extend
            pairs.append((group_dir.name, option.stem))
    return pairs


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_config_option_composes(group: str, option: str, tmp_path: Path):
    cfg = tiny_config(tmp_path, f"{group}={option}", "data.root=/some/where")
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["optimized_metric"] == "val/acc_best"
    assert container["trainer"]["max_epochs"] >= 1


def test_default_config_is_the_fashion_mnist_recipe():
    cfg = compose_config([])
    assert cfg.data.source._target_ == "paddy.data.FashionMNISTSource"
    assert cfg.optimized_metric == "val/acc_best" and cfg.seed == 42 and cfg.ckpt_path is None
    assert cfg.callbacks.early_stopping.patience == 5
    for group in ("data", "backbone", "attention", "model", "optimizer", "scheduler", "trainer", "callbacks",
                  "logger", "paths"):
        assert group in cfg


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("paddy.train", *args, cwd=cwd, timeout=300)


def test_cli_trains_and_writes_the_run_dir(tmp_path: Path, paddy_root: Path):
    run = tmp_path / "cli_run"
    result = run_cli(*TINY, "data=paddy", f"data.root={paddy_root}", "data.val_fraction=0.25",
                     "data.test_fraction=0.25", "trainer.precision=16", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = assert_run_dir(run, epochs=2, with_test=True)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    # fp16 on a CPU: one clear line, then bf16-mixed, and no wall of Lightning warnings.
    output = result.stdout + result.stderr
    assert output.count("needs a GPU") == 1
    assert metrics["precision"] == "bf16-mixed"
    assert "Traceback" not in output


def test_cli_stops_on_bad_data_before_training(tmp_path: Path, paddy_root: Path):
    broken = paddy_root / "train_images" / "blast" / "100104.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    run = tmp_path / "bad_run"
    result = run_cli(*TINY, "data=paddy", f"data.root={paddy_root}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "train_images/blast/100104.jpg: truncated JPEG" in output
    assert "Traceback" not in output
    assert not (run / "checkpoints").exists()


def test_cli_unknown_group_option_lists_the_choices(tmp_path: Path):
    result = run_cli("data=padyy", cwd=tmp_path)
    assert result.returncode != 0
    assert "padyy" in result.stderr and "paddy" in result.stderr


def test_cli_pretrained_offline_points_to_pretrained_file(tmp_path: Path):
    env_cmd = [*TINY, "data=synthetic", "backbone.pretrained=true", "backbone.name=resnet18",
               f"hydra.run.dir={tmp_path / 'r'}"]
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        result = run_cli(*env_cmd, cwd=tmp_path)
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert result.returncode == 2
    assert "backbone.pretrained_file" in result.stdout + result.stderr
