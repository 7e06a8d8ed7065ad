"""The training recipe: schedules, resume (explicit, auto, and exactly like an uninterrupted run), fps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from paddy.config import compose_config
from paddy.pipeline import RunConfigError, resolve_resume, train
from paddy.tasks.optim import create_scheduler


def tiny(tmp_path: Path, *overrides: str):
    return compose_config([*TINY, "data=synthetic", f"paths.output_dir={tmp_path / 'run'}", *overrides])


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_step_and_plateau_schedules():
    step = create_scheduler(_optimizer(), 100, name="step", step_size=2, gamma=0.5)
    assert step["interval"] == "epoch"
    for _ in range(4):
        step["scheduler"].optimizer.step()
        step["scheduler"].step()
    assert step["scheduler"].get_last_lr()[0] == pytest.approx(0.25)
    plateau = create_scheduler(_optimizer(), 100, name="plateau", patience=1, factor=0.5)
    assert plateau["monitor"] == "val/loss"
    for _ in range(3):
        plateau["scheduler"].step(1.0)
    assert plateau["scheduler"].optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    cosine = create_scheduler(_optimizer(), 0, name="cosine", t_max_epochs=2, steps_per_epoch=5)
    for _ in range(10):
        cosine["scheduler"].optimizer.step()
        cosine["scheduler"].step()
    assert cosine["scheduler"].get_last_lr()[0] == pytest.approx(0.01)


@pytest.mark.parametrize("scheduler", ["step", "plateau", "cosine_warmup"])
def test_schedules_train_from_config(scheduler: str, tmp_path: Path):
    metrics = train(tiny(tmp_path, f"scheduler={scheduler}", "trainer.max_epochs=2"))
    assert metrics["epochs_run"] == 2


def test_resume_auto_and_bad_resume_values(tmp_path: Path):
    run = tmp_path / "run"
    assert resolve_resume(None, "auto", run) is None
    train(tiny(tmp_path, "trainer.max_epochs=1", "resume=auto"))
    assert resolve_resume(None, "auto", run) == str(run / "checkpoints" / "last.ckpt")
    metrics = train(tiny(tmp_path, "trainer.max_epochs=2", "resume=auto"))
    assert json.loads((run / "history.json").read_text())["epoch"] == [0, 1]
    assert metrics["epochs_run"] == 2
    with pytest.raises(RunConfigError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope.ckpt"), None, run)
    with pytest.raises(RunConfigError, match="resume='sometimes'"):
        resolve_resume(None, "sometimes", run)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path):
    """Stop after epoch 1, resume to epoch 2: same metrics as 2 epochs in one go."""
    deterministic = ["data/transforms=none", "model.head.dropout=0.0", "trainer.deterministic=true",
                     "scheduler=cosine", "trainer.max_epochs=2", "data.samples_per_class=16"]
    deterministic = [o for o in deterministic if not o.startswith("data.samples")]
    straight = train(tiny(tmp_path / "a", *deterministic))
    train(tiny(tmp_path / "b", *deterministic, "trainer.max_epochs=1", "scheduler.t_max_epochs=2"))
    resumed = train(tiny(tmp_path / "b", *deterministic, "resume=auto"))
    for key in ("valid_acc", "valid_loss", "train_loss", "val_acc_best", "test_acc"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-6), key


def test_metrics_json_has_fps_and_epoch_times(tmp_path: Path):
    metrics = train(tiny(tmp_path))
    assert metrics["fps"] > 0
    assert len(metrics["epoch_times"]) == metrics["epochs_run"] == 2
    assert metrics["best_epoch"] in (0, 1)


def test_freeze_and_ema_from_config(tmp_path: Path):
    metrics = train(tiny(tmp_path / "f", "freeze.backbone=true", "freeze.unfreeze_epoch=1", "trainer.max_epochs=2"))
    assert metrics["epochs_run"] == 2
    metrics = train(tiny(tmp_path / "e", "ema.enabled=true", "ema.decay=0.9"))
    checkpoint = torch.load(metrics["ckpt_path"], map_location="cpu", weights_only=False)
    assert any("EMAWeights" in key for key in checkpoint["callbacks"])


def test_diverging_run_stops_with_one_line_and_exit_3(tmp_path: Path):
    from test_train import run_cli

    run = tmp_path / "nan"
    result = run_cli(*TINY, "data=synthetic", "trainer.gradient_clip_val=null", "optimizer=sgd", "optimizer.lr=1e30",
                     "trainer_guard.max_bad_steps=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 3
    output = result.stdout + result.stderr
    assert "lower optimizer.lr or enable trainer.gradient_clip_val" in output
    assert "last finite loss" in output and "Traceback" not in output


def test_every_experiment_composes_with_a_data_root():
    from paddy.config import config_dir

    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        cfg = compose_config([f"experiment={path.stem}", "data.root=/data/x"])
        if path.stem != "kfold":  # the old scripts' recipes (kfold wraps any of them in folds)
            assert cfg.trainer.max_epochs >= 15, path.stem


def test_mixup_cutmix_channels_last_label_smoothing_train(tmp_path: Path):
    metrics = train(tiny(tmp_path, "mixup.mixup_alpha=0.2", "mixup.cutmix_alpha=1.0", "model.channels_last=true",
                         "model.label_smoothing=0.1", "trainer.max_epochs=1"))
    assert metrics["epochs_run"] == 1


def test_best_values_survive_a_resume(tmp_path: Path):
    first = train(tiny(tmp_path, "trainer.max_epochs=1"))
    checkpoint = torch.load(first["ckpt_path"], map_location="cpu", weights_only=False)
    assert any(key.startswith("val_acc_best") for key in checkpoint["state_dict"])


@pytest.mark.slow
def test_compile_trains(tmp_path: Path):
    metrics = train(tiny(tmp_path, "model.compile=true", "trainer.max_epochs=1"))
    assert metrics["epochs_run"] == 1


def test_recipe_callbacks_are_named_by_target_and_follow_their_switches():
    from paddy.pipeline import recipe_callbacks

    def names(*overrides: str) -> list[str]:
        return [type(c).__name__ for c in recipe_callbacks(compose_config(list(overrides)))]

    assert names() == ["EpochSeed", "NonFiniteLossGuard"]
    assert names("freeze.backbone=true", "ema.enabled=true", "trainer_guard.enabled=false", "seed=null") == [
        "FreezeSchedule", "EMAWeights"]
    freeze = recipe_callbacks(compose_config(["freeze.backbone=true", "freeze.unfreeze_epoch=3"]))[1]
    assert freeze.unfreeze_epoch == 3
