"""paddy.evaluate and paddy.predict on a tiny trained run (synthetic data, one short epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import run_module

from paddy.evaluate import EvaluationError, evaluate
from paddy.predict import collect_inputs, predict
from paddy.utils.checkpoints import CheckpointError, load_trained_model, resolve_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A large JPEG, grayscale / RGBA / 16-bit PNGs (one in a subfolder) and a corrupt .jpg."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    assert cv2.imwrite(str(folder / "photo.jpg"), rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
    assert cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (50, 70), dtype=np.uint8))
    assert cv2.imwrite(str(folder / "sub" / "rgba.png"), rng.integers(0, 256, (40, 40, 4), dtype=np.uint8))
    assert cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (45, 45, 3), dtype=np.uint16))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return folder


def test_resolve_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    best = json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    assert resolve_checkpoint(run_dir) == Path(best)
    assert resolve_checkpoint(run_dir / "checkpoints" / "last.ckpt").name == "last.ckpt"
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* \(expected checkpoints/\*\.ckpt\)"):
        resolve_checkpoint(tmp_path)


def test_evaluate_cli_matches_training_test_acc(run_dir: Path, tmp_path: Path) -> None:
    result = run_module("paddy.evaluate", f"ckpt_path={run_dir}", "latency_runs=3", "throughput_runs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.iterdir())  # Hydra leaves nothing behind
    out = run_dir / "eval_test"
    for name in ("metrics_test.json", "classification_report.txt", "classification_report.json",
                 "confusion_matrix.png", "confusion_matrix_normalized.png", "roc_curves.png", "predictions_test.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics_test.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
                "f1_weighted", "auc", "per_class", "confusion_matrix", "latency_ms", "throughput_img_s",
                "peak_gpu_memory_mb"):
        assert key in metrics, key
    assert len(metrics["per_class"]) == metrics["num_classes"] == 4
    assert sum(row["support"] for row in metrics["per_class"].values()) == metrics["num_samples"]
    assert metrics["latency_ms"]["median_ms"] > 0
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == run_metrics["split_sizes"]["test"]
    assert abs(metrics["accuracy"] - run_metrics["test_acc"]) < 1e-6
    assert abs(metrics["f1_macro"] - run_metrics["test_f1"]) < 1e-6


def test_evaluate_other_split_and_errors(run_dir: Path, tmp_path: Path) -> None:
    metrics = evaluate(run_dir, split="valid", output_dir=tmp_path / "val", latency_runs=0, throughput_runs=0)
    assert metrics["split"] == "val" and (tmp_path / "val" / "metrics_val.json").is_file()
    with pytest.raises(EvaluationError, match=r"no 'test' split \(available splits: train, val\)"):
        evaluate(run_dir, data_config={"test_fraction": 0.0}, output_dir=tmp_path / "x")
    with pytest.raises(CheckpointError, match="no such file"):
        evaluate(tmp_path / "no-such-run")


def test_checkpoint_of_another_model_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["head"]["hidden"] = [16]
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="missing keys: head.mlp.0.bias"):
        load_trained_model(tmp_path / "edited.ckpt")
    checkpoint["hyper_parameters"]["config"]["model"]["head"]["hidden"] = []
    checkpoint["hyper_parameters"]["config"]["backbone"]["name"] = "resnet18"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="do not fit.*unexpected keys: backbone"):
        load_trained_model(tmp_path / "other.ckpt")


def test_predict_cli_on_mixed_folder(run_dir: Path, images: Path, tmp_path: Path) -> None:
    result = run_module("paddy.predict", f"ckpt_path={run_dir}", f"input={images}", "output=out/preds.csv", "topk=2",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "corrupt.jpg" in result.stderr
    with (tmp_path / "out" / "preds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["deep.png", "gray.png", "photo.jpg", "rgba.png"]
    assert list(rows[0]) == ["path", "label", "confidence", "top1_label", "top1_prob", "top2_label", "top2_prob"]
    assert all(r["label"].startswith("class_") and 0 < float(r["confidence"]) <= 1 for r in rows)
    skipped = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(str(images / "corrupt.jpg"))
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_predict_tta_csv_and_submission(run_dir: Path, images: Path, tmp_path: Path) -> None:
    paths = collect_inputs(images)
    plain = predict(run_dir, paths, topk=3)
    flipped = predict(run_dir, paths, tta=True, topk=10)
    assert [r["error"] is not None for r in plain] == [r["error"] is not None for r in flipped] == [
        True, False, False, False, False]  # corrupt.jpg sorts first
    assert [r["path"] for r in plain] == [str(p) for p in paths] and len(plain[1]["topk"]) == 3
    good = [r for r in flipped if r["error"] is None]
    assert all(len(r["topk"]) == 4 and abs(sum(e["prob"] for e in r["topk"]) - 1) < 1e-4 for r in good)

    listing = tmp_path / "list.csv"
    listing.write_text("image_id,label\nphoto.jpg,x\nsub/rgba.png,y\n")
    assert collect_inputs(listing, image_root=images) == [images / "photo.jpg", images / "sub" / "rgba.png"]

    test_images = tmp_path / "kaggle" / "test_images"
    test_images.mkdir(parents=True)
    for name in ("200001.jpg", "200002.jpg"):
        (test_images / name).write_bytes((images / "photo.jpg").read_bytes())
    result = run_module("paddy.predict", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={test_images}",
                  "tta=true", f"output={tmp_path / 'kaggle' / 'preds.csv'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "kaggle" / "submission.csv").read_text().splitlines()
    assert lines[0] == "image_id,label" and [line.split(",")[0] for line in lines[1:]] == ["200001.jpg", "200002.jpg"]


def test_predict_all_unreadable_exits_1(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"nope")
    (bad / "b.png").write_bytes(b"")
    result = run_module("paddy.predict", f"ckpt_path={run_dir}", f"input={bad}", cwd=tmp_path)
    assert result.returncode == 1
    assert "none of the 2 input image(s) could be read" in result.stderr
    assert not (tmp_path / "predictions.csv").exists()
    missing = run_module("paddy.evaluate", f"ckpt_path={tmp_path / 'no-such-run'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file or directory" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stderr
