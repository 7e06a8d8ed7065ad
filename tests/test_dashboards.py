"""Epoch metrics of the task, the TensorBoard dashboards callback, and scripts/check_tensorboard.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hp_metadata
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paddy.config import compose_config
from paddy.pipeline import train
from paddy.tasks.classification import ClassificationTask
from paddy.tasks.dashboards import HEADLINE_HPARAMS, HPARAM_METRICS, confusion_matrix_figure, key_hparams
from paddy.tasks.metrics import EVAL_SCALARS, class_tag_names, sanitize_tag

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# The dashboards callback is part of conf/callbacks/default.yaml.
DASHBOARDS = "callbacks.tensorboard_dashboards.num_samples=16"


# ---------------------------------------------------------------------- metrics of the task


def test_epoch_metrics_match_a_hand_count():
    torch.manual_seed(0)
    inputs, labels = torch.randn(40, 6), torch.arange(40) % 3
    model = nn.Linear(6, 3)
    task = ClassificationTask(model, 3, class_names=["Brown spot", "blast", "normal"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=16)
    result = trainer.test(task, dataloaders=loader, verbose=False)[0]

    with torch.no_grad():
        predicted = model(inputs).argmax(1)
    counts = torch.zeros(3, 3, dtype=torch.int64)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        counts[true, guess] += 1
    assert torch.equal(task.last_confusion["test"], counts)
    tp = counts.diag().double()
    precision = tp / counts.sum(0).clamp(min=1)
    recall = tp / counts.sum(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros(3))
    support = counts.sum(1).double() / counts.sum()
    assert result["test/acc"] == pytest.approx(float(tp.sum() / counts.sum()), abs=1e-6)
    assert result["test/f1"] == pytest.approx(float(f1.mean()), abs=1e-6)
    assert result["test/f1_weighted"] == pytest.approx(float((f1 * support).sum()), abs=1e-6)
    assert result["test/precision_macro"] == pytest.approx(float(precision.mean()), abs=1e-6)
    assert result["test/recall_weighted"] == pytest.approx(float((recall * support).sum()), abs=1e-6)
    assert result["test/f1_class/Brown_spot"] == pytest.approx(float(f1[0]), abs=1e-6)
    assert {f"test/{name}" for name in EVAL_SCALARS} | {"test/loss"} <= set(result)
    assert torch.allclose(task.last_f1_class["test"].double(), f1, atol=1e-6)


def test_class_tag_names_are_safe_and_unique():
    assert sanitize_tag("Brown spot (fungal)") == "Brown_spot_fungal"
    assert sanitize_tag("///") == "class"
    assert class_tag_names(["a b", "a/b", "a_b"], 3) == ["a_b", "a_b_1", "a_b_2"]
    assert class_tag_names(["x"], 2) == ["class_0", "class_1"]


def test_key_hparams_have_the_same_columns_for_every_attention():
    config = {"model": {"name": "mnv3s_ca"}, "backbone": {"name": "mobilenetv3_small_100", "pretrained": True},
              "attention": {"name": "cbam", "reduction": 16, "kernel_size": 7, "channel": True, "spatial": False,
                            "placement": "head"},
              "optimizer": {"name": "adamw", "lr": 3e-4, "head_lr": None, "weight_decay": 0.05},
              "scheduler": {"name": "cosine"}, "data": {"batch_size": 32, "image_size": 224},
              "trainer": {"max_epochs": 10, "precision": "16-mixed"}, "seed": 7}
    params = key_hparams(config, precision="16-mixed")
    assert params["attention.name"] == "cbam" and params["attention.spatial"] == "false"
    assert params["attention.heads"] == "none"  # not a cbam knob: still a column
    assert params["optimizer.head_lr"] == 3e-4  # null falls back to lr
    assert params["backbone.pretrained"] == "true" and params["seed"] == 7
    other = key_hparams({**config, "attention": {"name": "none", "placement": "head"}})
    assert set(other) == set(params)
    assert set(HEADLINE_HPARAMS) <= set(params)


def test_confusion_matrix_figure_handles_many_classes_and_empty_rows():
    from paddy.tasks.dashboards import render_figure

    counts = torch.zeros(30, 30, dtype=torch.int64)
    counts[0, 0] = 5
    image = render_figure(confusion_matrix_figure(counts, [f"c{i}" for i in range(30)]))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_figure(torch.zeros(2, 3), ["a", "b"])


# ---------------------------------------------------------------------- a real run with the callback


@pytest.fixture(scope="module")
def dashboard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny synthetic run with the dashboards callback; returns its run directory."""
    root = tmp_path_factory.mktemp("dashboards")
    cfg = compose_config([*TINY, "data=synthetic", "data.source.samples_per_class=16",
                          f"paths.output_dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}", DASHBOARDS])
    train(cfg)
    return root / "run"


def _hparams_sessions(logdir: Path) -> list[hp_metadata.plugin_data_pb2.SessionStartInfo]:
    """Every HPARAMS session-start record in every event file of ``logdir``."""
    sessions = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == hp_metadata.SESSION_START_INFO_TAG:
                    content = value.metadata.plugin_data.content
                    sessions.append(hp_metadata.parse_session_start_info_plugin_data(content))
    return sessions


def test_dashboards_write_scalars_images_and_one_hparams_session(dashboard_run: Path):
    logdir = dashboard_run / "tensorboard"
    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    expected = {"train/loss", "train/acc", "train/f1", "val/loss", "val/acc", "val/f1", "val/f1_weighted",
                "val/precision_macro", "val/recall_macro", "val/precision_weighted", "val/recall_weighted",
                "val/acc_best", "val/f1_best", "test/acc", "test/f1_weighted", "val/f1_class/class_0",
                "lr-AdamW/backbone", "lr-AdamW/head", *HPARAM_METRICS}
    assert expected <= scalars, sorted(expected - scalars)
    assert not {t for t in scalars if t.startswith("train/") and ("weighted" in t or "f1_class" in t)}
    assert {"samples/train_augmented", "val/confusion_matrix", "test/confusion_matrix"} <= set(tags["images"])
    assert len(events.Images("val/confusion_matrix")) == 2  # one per epoch, none from a sanity check
    grid = events.Images("samples/train_augmented")[0]
    assert grid.width > 200 and grid.height > 200

    sessions = _hparams_sessions(logdir)
    assert len(sessions) == 1, "one HPARAMS session per run (none from Lightning's fit-start hparams)"
    hparams = {k: (v.string_value if v.HasField("string_value") else v.number_value)
               for k, v in sessions[0].hparams.items()}
    assert hparams["model.name"] == "test_resnet" and hparams["backbone.name"] == "test_resnet"
    assert hparams["attention.name"] == "none" and hparams["optimizer.name"] == "adamw"
    assert hparams["data.batch_size"] == 8 and hparams["data.image_size"] == 32
    assert hparams["trainer.max_epochs"] == 2 and hparams["seed"] == 42
    assert hparams["trainer.precision"] == "32-true" and hparams["scheduler.name"] == "cosine"
    experiment = hp_metadata.parse_experiment_plugin_data(
        events.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    for tag in HPARAM_METRICS:
        assert 0.0 <= events.Scalars(tag)[-1].value < 10.0
    assert events.Scalars("hparams/val_acc_best")[-1].value == pytest.approx(events.Scalars("val/acc_best")[-1].value)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_check_tensorboard_script_sees_the_run_in_a_browser(dashboard_run: Path):
    command = [sys.executable, str(REPO / "scripts" / "check_tensorboard.py"), str(dashboard_run),
               "--scalar", "val/acc", "--scalar", "val/f1_weighted", "--scalar", "train/loss",
               "--image", "samples/train_augmented", "--image", "val/confusion_matrix",
               "--hparam", "model.name", "--hparam", "optimizer.lr", "--hparam-metric", "hparams/val_acc_best",
               "--timeout", "25"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check_tensorboard: OK" in done.stdout
    assert "HPARAMS: 1 session(s)" in done.stdout
    for name in ("scalars", "hparams"):
        assert (dashboard_run / "tensorboard_check" / f"{name}.png").stat().st_size > 10_000


def test_check_tensorboard_script_fails_clearly(tmp_path: Path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_tensorboard.py"), str(tmp_path),
                           "--no-browser"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no TensorBoard event files" in done.stderr
