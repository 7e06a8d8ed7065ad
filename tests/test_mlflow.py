"""``logger=mlflow`` / ``logger=many``: a real CLI training run, its MLflow store read back with MLflow's client.

One tiny run with ``logger=many`` (TensorBoard and MLflow side by side) serves the tests below: the
MLflow run must hold what TensorBoard and the run directory hold, value for value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from paddy.config import compose_config

mlflow = pytest.importorskip("mlflow", reason="the optional extra paddy[mlflow]")

EXPERIMENT = "paddy-test"
LR = 0.002
TRAIN = ["data=synthetic", "backbone.name=test_resnet", "data.image_size=32", "data.num_workers=0", "trainer=debug",
         "trainer.max_epochs=2", f"optimizer.lr={LR}", "++callbacks.rich_progress_bar=null"]
ARTIFACTS = {"metrics.json", "history.json", "training_plot.png", "config.yaml", "hydra", "confusion_matrix_val.png",
             "confusion_matrix_test.png", "samples_train_augmented.png"}


def run_train(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``python -m paddy.train *args`` in ``cwd`` (``prelude``: Python run before paddy is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PADDY_CACHE_DIR=str(cwd / "cache"), PYTHONWARNINGS="ignore::DeprecationWarning")
    code = f"{prelude}\nimport sys\nsys.argv = ['paddy.train', *sys.argv[1:]]\nfrom paddy.train import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def many_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-epoch CLI run with ``logger=many`` into a SQLite store of its own: its run directory, its
    metrics.json and history.json, and the MLflow run."""
    tmp = tmp_path_factory.mktemp("mlflow")
    run_dir, store = tmp / "run", tmp / "store"
    uri = f"sqlite:///{store}/mlflow.db"
    result = run_train(*TRAIN, "logger=many", f"logger.mlflow.tracking_uri={uri}",
                       f"logger.mlflow.artifact_location={store}/artifacts", f"task_name={EXPERIMENT}",
                       f"hydra.run.dir={run_dir}", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp / "mlruns").exists()  # everything went where the config said
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return {"dir": run_dir, "client": client, "run": runs[0], "store": store,
            "metrics": json.loads((run_dir / "metrics.json").read_text()),
            "history": json.loads((run_dir / "history.json").read_text())}


def test_mlflow_run_has_the_params_of_the_run(many_run: dict):
    run, metrics = many_run["run"], many_run["metrics"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == str(many_run["dir"])
    params = run.data.params
    # Lightning's flattened hyperparameters, and the HPARAMS-row keys paddy adds.
    assert float(params["config/optimizer/lr"]) == LR and float(params["optimizer.lr"]) == LR
    assert params["config/model/name"] == params["model.name"] == metrics["model_name"]
    assert params["backbone.name"] == "test_resnet" and params["data.image_size"] == "32"
    assert params["trainer.precision"] == metrics["precision"]
    assert all(len(value) <= 500 for value in params.values())


def test_mlflow_metric_history_is_the_runs_history(many_run: dict):
    client, run_id = many_run["client"], many_run["run"].info.run_id
    history, metrics = many_run["history"], many_run["metrics"]

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]

    assert len(history["valid_acc"]) == 2
    for mlflow_key, history_key in (("val/acc", "valid_acc"), ("val/loss", "valid_loss"), ("val/f1", "valid_f1"),
                                    ("train/loss", "train_loss"), ("train/acc", "train_acc")):
        assert series(mlflow_key) == pytest.approx(history[history_key], rel=1e-6), mlflow_key
    assert series("val/acc_best")[-1] == pytest.approx(metrics["val_acc_best"], rel=1e-6)
    assert series("test/acc") == pytest.approx([metrics["test_acc"]], rel=1e-6)
    assert series("test/f1") == pytest.approx([metrics["test_f1"]], rel=1e-6)


def test_mlflow_artifacts_and_checkpoint_tag(many_run: dict, tmp_path: Path):
    client, run = many_run["client"], many_run["run"]
    run_id, run_dir = run.info.run_id, many_run["dir"]
    assert {a.path for a in client.list_artifacts(run_id)} == ARTIFACTS
    assert run.info.artifact_uri.startswith(str(many_run["store"] / "artifacts"))
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert json.loads((local / "metrics.json").read_text()) == many_run["metrics"]
    assert (local / "history.json").read_bytes() == (run_dir / "history.json").read_bytes()
    for name in ("training_plot.png", "confusion_matrix_val.png", "confusion_matrix_test.png",
                 "samples_train_augmented.png"):
        png = (local / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, name
    config = OmegaConf.load(local / "config.yaml")
    assert config.optimizer.lr == LR and config.backbone.name == "test_resnet"
    assert OmegaConf.load(local / "hydra" / "overrides.yaml")[0] == TRAIN[0]
    # The checkpoint stays in the run directory; its path is a tag.
    tags = run.data.tags
    assert tags["best_checkpoint"] == many_run["metrics"]["ckpt_path"]
    assert Path(tags["best_checkpoint"]).is_file() and Path(tags["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert tags["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert not [a for a in client.list_artifacts(run_id) if a.path.endswith(".ckpt")]


def test_many_writes_the_same_scalars_to_tensorboard(many_run: dict):
    """Every scalar TensorBoard got (but its HPARAMS-tab columns) is an MLflow metric with the same values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client, run_id = many_run["client"], many_run["run"].info.run_id
    events = sorted((many_run["dir"] / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    assert {"val/acc", "val/loss", "train/loss", "test/acc", "lr-AdamW/head"} <= set(scalars)
    for tag, points in scalars.items():
        if tag.startswith("hparams/"):
            continue
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert [s for s, _ in logged] == [s for s, _ in sorted(points)], tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in sorted(points)], rel=1e-6), tag


def test_logger_groups_compose():
    """``logger=mlflow`` is one MLflow logger into ./mlruns; ``logger=many`` is it plus TensorBoard's."""
    mlflow_only = compose_config(["logger=mlflow", "paths.output_dir=/runs/r1"]).logger
    many = compose_config(["logger=many", "paths.output_dir=/runs/r1"]).logger
    assert set(mlflow_only) == {"mlflow"} and set(many) == {"tensorboard", "mlflow"}
    assert many.mlflow == mlflow_only.mlflow
    assert many.tensorboard == compose_config(["logger=tensorboard", "paths.output_dir=/runs/r1"]).logger.tensorboard
    node = OmegaConf.to_container(mlflow_only.mlflow, resolve=True)
    assert node["_target_"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert node["run_name"] == "/runs/r1" and node["experiment_name"] == "train" and node["log_model"] is False
    if "MLFLOW_TRACKING_URI" not in os.environ:
        assert node["tracking_uri"] == "sqlite:///mlruns/mlflow.db"


def test_mlflow_logger_without_mlflow_is_refused_before_data(tmp_path: Path):
    """With the mlflow import failing (as when it is not installed), paddy still imports, and
    ``logger=mlflow`` stops at the settings check in one line naming the extra to install."""
    blocked = "import sys\nsys.modules['mlflow'] = None\nimport paddy.pipeline, paddy.tasks.mlflow"
    run_dir = tmp_path / "run"
    result = run_train("logger=mlflow", "data=imagefolder", f"data.root={tmp_path / 'no-such-data'}",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path, prelude=blocked)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "logger.mlflow (lightning.pytorch.loggers.MLFlowLogger) needs the mlflow package" in output
    assert "pip install 'paddy[mlflow]'" in output
    assert "Traceback" not in output and "no-such-data" not in output
    assert len(output.strip().splitlines()) == 1
    assert not run_dir.exists() and not (tmp_path / "mlruns").exists()
