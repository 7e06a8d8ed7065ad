"""``python -m paddy.benchmark mode=throughput`` on the CPU at toy sizes: every row measured, files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from paddy.benchmark.throughput import write_photo_set


def test_photo_set_is_the_paddy_layout_and_written_once(tmp_path: Path):
    root = write_photo_set(tmp_path / "photos", images=12, width=64, height=48, classes=3)
    rows = (root / "train.csv").read_text().splitlines()
    assert rows[0] == "image_id,label,variety,age" and len(rows) == 13
    image_id, label = rows[5].split(",")[:2]
    image = cv2.imread(str(root / "train_images" / label / image_id))
    assert image.shape == (48, 64, 3)
    stamp = (root / "train.csv").stat().st_mtime_ns
    write_photo_set(root, images=12, width=64, height=48, classes=3)
    assert (root / "train.csv").stat().st_mtime_ns == stamp


def test_throughput_benchmark_measures_every_path(tmp_path: Path):
    out = tmp_path / "results" / "throughput"
    env = {**os.environ, "PADDY_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "paddy.benchmark", "mode=throughput", "model=resnet18_base", "backbone.name=test_resnet",
         "device=cpu", "image_size=32", "batch_size=8", "images=64", "photo_size=64x48", "epochs=2", "steps=3",
         "warmup=1", "num_workers=0", "++callbacks.rich_progress_bar=null", f"out={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = {row["measurement"]: row for row in payload["rows"]}
    assert len(rows) == 4
    raw = rows["raw PyTorch loop (in-device data)"]
    in_device = rows["paddy (in-device data)"]
    fast = next(row for name, row in rows.items() if "fast path" in name)
    plain = next(row for name, row in rows.items() if "plain loader" in name)
    for row in (raw, in_device, fast, plain):
        assert row["img_s"] > 0
    assert raw["timed_images"] == in_device["timed_images"] == 3 * 8
    assert in_device["ratio"] == in_device["img_s"] / raw["img_s"]
    assert fast["ratio"] == fast["img_s"] / in_device["img_s"]
    for row in (fast, plain):
        assert row["epochs_run"] == 2 and 0 < row["command_to_first_step_s"] < row["command_wall_s"]
        assert row["setup_to_first_step_s"] < row["run_wall_s"]
    assert len(payload["details"]["jpeg_fast_epochs"]) == 2
    settings = payload["settings"]
    assert (settings["model"], settings["batch_size"], settings["image_size"]) == ("resnet18_base", 8, 32)
    assert payload["environment"]["torch"]
    assert "| raw PyTorch loop" in out.with_suffix(".md").read_text()
    assert "raw PyTorch loop" in result.stdout
    # The photos were generated once, under the cache folder, and the cold caches were temporary.
    assert (tmp_path / "cache" / "benchmark-photos" / "64-64x48" / ".complete").exists()
    assert not (tmp_path / "cache" / "images").exists()
