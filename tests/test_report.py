"""``python -m paddy.report``: leaderboard and sweep reports over fake (but realistically laid out) run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml

from paddy.report import main, pareto_front, train_command

optuna.logging.set_verbosity(optuna.logging.WARNING)

LEADERBOARD_COLUMNS = ["rank", "run", "status", "model", "backbone", "attention", "lr", "weight_decay", "batch_size",
                       "reduction", "kernel_size", "heads", "image_size", "max_epochs", "valid_acc", "valid_f1",
                       "test_acc", "test_f1", "params_m", "fps", "epochs_run", "duration_s"]
SWEEP_OVERRIDES = ["hparams_search=optuna", "hydra.sweeper.n_trials=5", "trainer.max_epochs=2"]


def make_run(path: Path, *, backbone: str = "resnet18", attention: str = "none", acc: float | None = 0.9,
             fps: float | None = 1500.0, overrides: list[str] | None = None, lr: float = 1e-3, wd: float = 0.05,
             test: bool = True, attention_cfg: dict | None = None, metrics: bool = True) -> Path:
    """A run folder as paddy.train leaves it: .hydra/{config,overrides}.yaml, history.json, metrics.json."""
    (path / ".hydra").mkdir(parents=True)
    config = {
        "task_name": "train", "seed": 42, "optimized_metric": "val/acc_best",
        "data": {"_target_": "paddy.data.ImageDataModule", "image_size": 32, "batch_size": 128},
        "backbone": {"name": backbone, "pretrained": False},
        "attention": {"name": attention, **(attention_cfg or {})},
        "model": {"name": "${backbone.name}", "kind": "classifier"},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": wd, "head_lr": None},
        "trainer": {"max_epochs": 3, "accelerator": "auto"},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
    }
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    history = {"epoch": [0, 1, 2], "train_loss": [1.2, 0.8, 0.6], "valid_loss": [0.9, 0.7, 0.65],
               "train_acc": [0.6, 0.75, 0.8], "valid_acc": [0.7, 0.8, acc or 0.8], "valid_f1": [0.68, 0.79, 0.85],
               "learning_rates": [1e-3, 5e-4, 1e-4], "epoch_time": [120.0, 118.5, 119.2]}
    (path / "history.json").write_text(json.dumps(history))
    (path / "train.log").write_text("[2026-11-23 10:41:07,000][paddy][INFO] - Data: FashionMNISTSource\n")
    if not metrics:
        return path
    values = {
        "model_name": backbone, "backbone": backbone, "attention": attention, "dataset": "fashion-mnist",
        "num_classes": 10, "classes": [str(i) for i in range(10)], "split_sizes": {"train": 54000, "val": 6000},
        "best_epoch": 2, "valid_acc": acc, "valid_loss": 0.65, "valid_f1": 0.85, "train_acc": 0.8,
        "train_loss": 0.6, "val_acc_best": acc, "val_f1_best": 0.85, "epochs_run": 3,
        "epoch_times": history["epoch_time"], "fps": fps, "num_params": 11_181_642, "size_mb": 42.7,
        "ckpt_path": str(path / "checkpoints" / "epoch_002.ckpt"), "last_ckpt_path": None, "precision": "32-true",
        "device": "cpu", "total_time_s": 402.3, "confusion_matrix": {}, "f1_per_class": {},
        "optimized_metric": "val/acc_best", "optimized_value": acc,
    }
    if test:
        values.update({"test_acc": (acc or 0.8) - 0.01, "test_loss": 0.66, "test_f1": 0.84})
    (path / "metrics.json").write_text(json.dumps(values))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """3 single runs + 1 with a corrupt metrics.json, and a sweep: 3 job folders + an Optuna study of 5 trials."""
    day = tmp_path / "outputs" / "2026-11-23"
    make_run(day / "10-41-07", backbone="resnet18", acc=0.89, fps=2000.0)
    make_run(day / "11-02-13", backbone="mobilenetv3_small_100", attention="ca", acc=0.86, fps=5000.0,
             attention_cfg={"reduction": 32}, test=False)
    make_run(day / "12-00-00", backbone="efficientnet_b0", attention="cbam", acc=0.91, fps=800.0,
             attention_cfg={"reduction": 16, "kernel_size": 7})
    broken = make_run(day / "13-00-00", backbone="resnet50")
    (broken / "metrics.json").write_text('{"model_name": "resnet50", "valid_acc": 0.')

    sweep = tmp_path / "multirun" / "2026-11-24" / "09-00-00"
    lrs, wds = [1e-3, 3e-4, 1e-2, 3e-3, 1e-4], [0.05, 0.01, 0.1, 0.02, 0.1]
    for job, acc in ((0, 0.88), (1, 0.92), (2, None)):
        ov = [f"optimizer.lr={lrs[job]}", f"optimizer.weight_decay={wds[job]}", *SWEEP_OVERRIDES]
        make_run(sweep / str(job), acc=acc, lr=lrs[job], wd=wds[job], overrides=ov, metrics=acc is not None)
    (sweep / "2" / "train.log").write_text(
        "[2026-11-24 09:10:00,000][paddy][ERROR] - non-finite loss at epoch 0, step 3: lower optimizer.lr\n")
    study = optuna.create_study(storage=f"sqlite:///{sweep}/optuna.db", study_name="paddy", direction="maximize")
    dists = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "optimizer.weight_decay": optuna.distributions.FloatDistribution(0.0, 0.1)}
    states = [("COMPLETE", 0.88), ("COMPLETE", 0.92), ("FAIL", None), ("PRUNED", None), ("COMPLETE", 0.85)]
    for n, (state, value) in enumerate(states):
        attrs = {"fail_reason": "NonFiniteLossError: non-finite loss"} if state == "FAIL" else {}
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer.lr": lrs[n], "optimizer.weight_decay": wds[n]}, distributions=dists,
            value=value, state=optuna.trial.TrialState[state], user_attrs=attrs,
            intermediate_values={0: 0.5} if state == "PRUNED" else None))
    return tmp_path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_leaderboard_and_sweep_report(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = runs / "report"
    assert main([str(runs / "outputs"), str(runs / "multirun"), "--out", str(out)]) == 0
    assert "leaderboard.md" in capsys.readouterr().out

    rows = read_csv(out / "leaderboard.csv")
    assert list(rows[0]) == LEADERBOARD_COLUMNS
    assert [r["run"] for r in rows] == [
        "multirun/2026-11-24/09-00-00/1", "outputs/2026-11-23/12-00-00", "outputs/2026-11-23/10-41-07",
        "multirun/2026-11-24/09-00-00/0", "outputs/2026-11-23/11-02-13",
        "multirun/2026-11-24/09-00-00/2", "outputs/2026-11-23/13-00-00"]  # incomplete runs last
    best = rows[0]
    assert (best["rank"], best["status"], best["model"], best["lr"], best["batch_size"]) == ("1", "ok", "resnet18",
                                                                                             "0.0003", "128")
    assert (best["valid_acc"], best["params_m"], best["fps"], best["epochs_run"]) == ("0.92", "11.182", "1500.0", "3")
    cbam = rows[1]
    assert (cbam["attention"], cbam["reduction"], cbam["kernel_size"], cbam["heads"]) == ("cbam", "16", "7", "")
    assert rows[4]["test_acc"] == ""  # that run was not tested
    assert rows[-1]["status"].startswith("incomplete: metrics.json corrupt")
    assert rows[-2]["rank"] == "" and "non-finite loss" in rows[-2]["status"]

    md = (out / "leaderboard.md").read_text()
    assert "7 runs" in md and "5 complete, 2 incomplete" in md and "![accuracy vs fps](pareto.png)" in md
    assert "## Incomplete runs" in md and "`outputs/2026-11-23/13-00-00`: metrics.json corrupt" in md
    assert md.index("09-00-00/1") < md.index("12-00-00") < md.index("10-41-07")
    assert (out / "pareto.png").stat().st_size > 5000

    sweep = runs / "multirun" / "2026-11-24" / "09-00-00"
    trials = read_csv(sweep / "sweep_trials.csv")
    assert [(t["number"], t["state"]) for t in trials] == [
        ("1", "COMPLETE"), ("0", "COMPLETE"), ("4", "COMPLETE"), ("3", "PRUNED"), ("2", "FAIL")]
    assert list(trials[0])[:6] == ["number", "state", "value", "val_acc_best", "test_acc", "duration_s"]
    assert trials[0]["optimizer.lr"] == "0.0003" and trials[0]["job"] == "1"
    assert trials[2]["job"] == "" and trials[2]["val_acc_best"] == ""  # trial 4 has no job folder here
    assert trials[4]["job"] == "2" and "fail_reason: NonFiniteLossError" in trials[4]["note"]

    report = (sweep / "sweep_report.md").read_text()
    assert "python -m paddy.train optimizer.lr=0.0003 optimizer.weight_decay=0.01 trainer.max_epochs=2\n" in report
    assert "Trial 1: val/acc_best = 0.92" in report and "3 complete, 1 pruned, 1 fail" in report
    images = ["optimization_history.png", "param_importances.png", "slice_optimizer_lr.png",
              "slice_optimizer_weight_decay.png"]
    for name in images:
        assert f"]({name})" in report
        assert (sweep / name).stat().st_size > 5000, name
    # The date folder of single runs is no sweep.
    assert not (runs / "outputs" / "2026-11-23" / "sweep_report.md").exists()


def test_metric_option_puts_runs_without_it_last(runs: Path) -> None:
    assert main([str(runs / "outputs"), "--metric", "test/acc"]) == 0
    rows = read_csv(runs / "outputs" / "leaderboard.csv")
    assert [r["run"] for r in rows][:3] == ["2026-11-23/12-00-00", "2026-11-23/10-41-07", "2026-11-23/11-02-13"]
    assert rows[2]["test_acc"] == "" and rows[2]["rank"] == "3"
    assert "Ranked by `test/acc` (higher is better" in (runs / "outputs" / "leaderboard.md").read_text()
    assert main([str(runs / "outputs"), "--metric", "valid_loss"]) == 0  # a loss ranks lowest first
    assert "valid_loss" in read_csv(runs / "outputs" / "leaderboard.csv")[0]


def test_sweep_without_study_and_without_fps(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job, (backbone, acc) in enumerate([("resnet18", 0.7), ("mobilenetv3_small_100", 0.8)]):
        make_run(sweep / str(job), backbone=backbone, acc=acc, fps=None,
                 overrides=[f"backbone={backbone}", "model.head.hidden=[256,128]", "hparams_search=grid"])
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"backbone": "mobilenetv3_small_100"}, "best_value": 0.8}))
    assert main([str(sweep)]) == 0
    assert "No plot: no run has fps" in (sweep / "leaderboard.md").read_text()
    assert not (sweep / "pareto.png").exists()
    trials = read_csv(sweep / "sweep_trials.csv")
    assert [(t["number"], t["backbone"]) for t in trials] == [("1", "mobilenetv3_small_100"), ("0", "resnet18")]
    assert "model.head.hidden" not in trials[0]  # the same in every job: not a swept parameter
    report = (sweep / "sweep_report.md").read_text()
    assert "python -m paddy.train backbone=mobilenetv3_small_100 'model.head.hidden=[256,128]'\n" in report
    assert "No plots: they need an Optuna study" in report and "best value 0.8" in report


def test_importances_need_two_varying_params(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "d" / "t"
    sweep.mkdir(parents=True)
    study = optuna.create_study(storage=f"sqlite:///{sweep}/optuna.db", study_name="paddy", direction="maximize")
    dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for n, lr in enumerate([1e-3, 1e-4, 1e-2]):
        make_run(sweep / str(n), acc=0.8 + n / 100, lr=lr, overrides=[f"optimizer.lr={lr}"])
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": lr}, distributions=dist, value=0.8 + n / 100))
    assert main([str(tmp_path / "multirun")]) == 0
    report = (sweep / "sweep_report.md").read_text()
    assert "No plot: parameter importances need at least 2 parameters" in report
    assert (sweep / "slice_optimizer_lr.png").stat().st_size > 5000
    assert "python -m paddy.train optimizer.lr=0.01\n" in report


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no runs found" in err and str(tmp_path / "empty") in err
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_helpers() -> None:
    assert sorted(pareto_front([(100, 0.9), (200, 0.8), (150, 0.7), (50, 0.95)])) == [(50, 0.95), (100, 0.9),
                                                                                        (200, 0.8)]
    assert train_command(["+hydra.job.chdir=true", "hparams_search=optuna", "data.root=/my data"]) == (
        "python -m paddy.train 'data.root=/my data'")
