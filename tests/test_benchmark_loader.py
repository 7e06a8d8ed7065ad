"""``python -m paddy.benchmark mode=loader`` on a few tiny generated photos: every loader measured, JSON complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from paddy.benchmark.loader import photo_like

LOADERS = ("timm", "paddy plain (scaled", "paddy plain (full", "paddy cache cold (full", "paddy cache cold (scaled",
           "paddy cache warm", "raw uint8")


def test_photo_like_images_are_the_same_scene_at_any_size():
    small = photo_like(np.random.default_rng(3), 80, 60)
    large = photo_like(np.random.default_rng(3), 160, 120)
    assert small.shape == (60, 80, 3) and large.shape == (120, 160, 3) and small.dtype == np.uint8
    assert small.std() > 20  # not flat
    halved = large.reshape(60, 2, 80, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - small).mean() < 25  # the same picture, not a new one


def test_loader_benchmark_measures_every_loader(tmp_path: Path):
    out = tmp_path / "results" / "loader_tiny"
    env = {**os.environ, "PADDY_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "paddy.benchmark", "mode=loader", "photo_size=64x48", "n_images=16", "image_size=16",
         "batch_size=4", "workers=0", f"out={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = payload["rows"]
    assert [next(name for name in LOADERS if row["loader"].startswith(name)) for row in rows] == list(LOADERS)
    for row in rows:
        assert row["workers"] == 0 and row["images"] == 16 and row["img_s"] > 0 and row["x_timm"] > 0
    assert set(payload["ratios"]["workers=0"]) == {"cold_scaled_vs_full", "warm_vs_timm", "raw_vs_timm",
                                                   "plain_scaled_vs_full"}
    decode = payload["decode"]
    assert decode["cache"]["side"] == 19 and decode["plain"]["side"] == 16  # ceil(16 / 0.875); image_size
    assert decode["plain"]["factors"] == [2] and decode["plain"]["mad"] >= 0  # 24x32 >= 16
    assert payload["environment"]["cpu"] and payload["settings"]["images"] == 16
    assert "| timm (PIL + create_transform) | 0 |" in out.with_suffix(".md").read_text()
    assert "paddy cache warm" in result.stdout
    # The photos were generated once, under the cache folder.
    assert (tmp_path / "cache" / "benchmark-photos" / "loader-16-64x48" / ".complete").exists()


def test_loader_benchmark_refuses_bad_options(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "paddy.benchmark", "mode=loader", "photo_size=640"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "photo_size='640'" in result.stderr
