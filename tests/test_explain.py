"""Grad-CAM (``python -m paddy.explain`` and ``explain.on_test``) on tiny trained runs of the presets the
issue names (mnv3s_ca, mnv3s_botlinear, mnv3s_dct), and the default target layer of every preset."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import CLASSES, class_image, write_image
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from paddy.config import compose_config, config_dir
from paddy.errors import SettingError
from paddy.explain import (
    CAM_METHODS,
    ExplainError,
    class_activation_maps,
    explain_command,
    explain_run,
    load_run,
    target_layer,
)
from paddy.model_inputs import input_features
from paddy.models.factory import build_model
from paddy.pipeline import train
from paddy.settings import check_settings

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # MobileNetV3's final map is 2 x 2 here (1 x 1 at 32 px, where a map cannot vary)
# Every preset (each builds and explains one 64-px image in well under a second), and CBAM in every block of
# a ResNet-18 (the placement of resnet50_cbam on another backbone).
PRESETS = [pytest.param([f"model={stem}"], id=stem)
           for stem in sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))]
PRESETS.append(pytest.param(["model=resnet18_base", "attention=cbam", "attention.placement=blocks"],
                            id="resnet18_cbam_blocks"))
TRAINED = ("mnv3s_ca", "mnv3s_botlinear", "mnv3s_dct")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ val/ test/ image folders, 3 classes of class-coloured stripes."""
    root = tmp_path_factory.mktemp("explain-data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        for c, label in enumerate(CLASSES):
            for i in range(n):
                write_image(root / split / label / f"{i}.jpg", class_image(c, rng, size=SIZE))
    return root


@pytest.fixture(scope="module")
def runs(folders: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short CPU runs with explain.on_test=true (TensorBoard logger), each trained when a test first asks
    for it: the default suite trains mnv3s_dct only, ``-m slow`` the other presets of TRAINED too."""
    out = tmp_path_factory.mktemp("explain-runs")

    class Runs(dict):
        def __missing__(self, preset: str) -> Path:
            overrides = [f"model={preset}", "data=imagefolder", f"data.root={folders}", f"data.image_size={SIZE}",
                         "data.batch_size=8", "data.num_workers=0", "trainer=debug", "trainer.max_epochs=3",
                         "trainer.limit_test_batches=1.0", "optimizer.lr=0.003", "backbone.pretrained=false",
                         "explain.on_test=true", "explain.n_images=4", "++callbacks.rich_progress_bar=null",
                         "++callbacks.tensorboard_dashboards=null", f"paths.output_dir={out / preset}"]
            train(compose_config(overrides))
            self[preset] = out / preset
            return self[preset]

    return Runs()


def _nonconstant(cams: np.ndarray) -> list[bool]:
    return [bool(cam.std() > 0) for cam in cams]


# ---------------------------------------------------------------------------------------------- trained runs


@pytest.mark.parametrize("preset", [p if p == "mnv3s_dct" else pytest.param(p, marks=pytest.mark.slow)
                                    for p in TRAINED])
def test_one_nonconstant_map_per_image(runs: dict[str, Path], folders: Path, preset: str) -> None:
    paths = sorted((folders / "test").rglob("*.jpg"))
    results = explain_run(load_run(runs[preset], device="cpu"), paths)
    assert [r.path for r in results] == paths and all(r.error is None for r in results)
    assert all(r.cam.shape == (SIZE, SIZE) and r.image.shape == (SIZE, SIZE, 3) for r in results)
    assert _nonconstant(np.stack([r.cam for r in results])) == [True] * len(paths)
    assert all(r.label in CLASSES and 0 < r.prob <= 1 for r in results)


def test_cli_writes_overlays_grid_and_compares_two_runs(runs: dict[str, Path], run_dir: Path, folders: Path,
                                                        tmp_path: Path) -> None:
    """mnv3s_dct next to the shared ResNet run of conftest (another architecture, input size and class list)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run([sys.executable, "-m", "paddy.explain", f"ckpt_path={runs['mnv3s_dct']}",
                             f"input={folders / 'test'}", f"compare={run_dir}", "output=cams",
                             "device=cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    written = sorted(p.relative_to(tmp_path / "cams").as_posix() for p in (tmp_path / "cams").rglob("*.png"))
    expected = sorted(f"{label}/{i}.png" for label in CLASSES for i in range(2))
    assert written == sorted([*expected, "grid.png"])
    one = cv2.imread(str(tmp_path / "cams" / "blast" / "0.png"))
    assert one.shape[1] > 2.5 * one.shape[0]  # photo | mnv3s_dct map | the ResNet's map, side by side
    assert "6 image(s) explained (gradcam)" in result.stdout


def test_on_test_writes_a_gradcam_grid_to_tensorboard(runs: dict[str, Path]) -> None:
    events = EventAccumulator(str(runs["mnv3s_dct"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "test/gradcam" in events.Tags()["images"]
    grid = events.Images("test/gradcam")[0]
    assert grid.width > 200 and grid.height > 200


# ---------------------------------------------------------------------------------------------- refusals


def _command(caplog: pytest.LogCaptureFixture, *overrides: str) -> tuple[int, str]:
    cfg = compose_config(list(overrides), config_name="explain")
    with caplog.at_level(logging.ERROR, logger="paddy"):
        try:
            return explain_command(cfg), caplog.text
        except SystemExit as stop:
            return int(stop.code), caplog.text


def test_unreadable_image_and_unknown_method_are_one_line(runs: dict[str, Path], folders: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not an image")
    good = (folders / "test" / "blast" / "0.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(good[: len(good) // 3])
    (bad / "fine.jpg").write_bytes(good)
    status, _ = _command(caplog, f"ckpt_path={runs['mnv3s_dct']}", f"input={bad}", f"output={tmp_path / 'out'}",
                         "device=cpu")
    errors = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert [line.split(":")[0] for line in errors] == ["error", "error"], errors
    assert str(bad / "cut.jpg") in errors[0] and str(bad / "notes.jpg") in errors[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine.png", "grid.png"]

    status, logged = _command(caplog, f"ckpt_path={runs['mnv3s_dct']}", f"input={bad}", "method=gradcamm")
    assert status == 2 and "method='gradcamm': unknown CAM method (one of: gradcam, gradcam++" in logged
    with pytest.raises(SettingError, match="explain.method='nope'"):
        check_settings(compose_config(["explain.method=nope"]))
    with pytest.raises(ExplainError, match="target_layer='head.nothing'"):
        explain_run(load_run(runs["mnv3s_dct"], device="cpu"), [bad / "fine.jpg"], layer="head.nothing")


# ---------------------------------------------------------------------------------------------- every preset


@pytest.mark.parametrize("overrides", PRESETS)
def test_default_target_layer_of_every_preset(overrides: list[str]) -> None:
    """The attention block on the final map when there is one, else the backbone. A random network's
    Grad-CAM of its predicted class may be all zero (no positive evidence), so the non-constant check
    uses Eigen-CAM, which needs no gradient sign; Grad-CAM must run through the same layer."""
    config = compose_config(overrides)
    settings = OmegaConf.to_container(config, resolve=False)
    torch.manual_seed(0)
    model = build_model(len(CLASSES), {**settings["backbone"], "pretrained": False, "pretrained_file": None},
                        settings["attention"], settings["model"]).eval()
    name, layer = target_layer(model)
    head_attention = config.attention.name != "none" and config.attention.placement == "head"
    assert name == ("attention" if head_attention else "backbone")
    image = torch.from_numpy(class_image(1, np.random.default_rng(0), size=SIZE)).permute(2, 0, 1)[None].float()
    image = (image / 255 - 0.45) / 0.25
    extras = {"dct": torch.randn(1, 1024)} if input_features(model) else None
    cams, probs = class_activation_maps(model, image, layer, "gradcam", extras)
    assert cams.shape == (1, SIZE, SIZE) and np.isfinite(cams).all() and 0 <= cams.min() <= cams.max() <= 1
    assert probs.shape == (1, len(CLASSES)) and not model.training
    eigen, _ = class_activation_maps(model, image, layer, "eigencam", extras)
    assert _nonconstant(eigen) == [True]


@pytest.mark.slow  # Score-CAM and Ablation-CAM run a forward pass per channel (minutes on a CPU)
def test_every_method_runs(runs: dict[str, Path], folders: Path) -> None:
    run = load_run(runs["mnv3s_ca"], device="cpu")
    paths = sorted((folders / "test").rglob("*.jpg"))[:2]
    for method in CAM_METHODS:
        results = explain_run(run, paths, method=method)
        assert all(r.cam is not None and r.cam.shape == (SIZE, SIZE) for r in results), method
