"""paddy.export: ONNX export of a tiny trained run (the CLI) and of zoo models (the library), each checked
against PyTorch in ONNX Runtime at two batch sizes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import paddy
from paddy.export import DEFAULT_ATOL, ExportError, export, export_model
from paddy.utils.checkpoints import CheckpointError, load_trained_model

REPO = Path(__file__).resolve().parents[1]
FAST = ["latency_runs=3", "warmup_runs=1", "throughput_runs=1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paddy.export", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_logits(model: torch.nn.Module, images: torch.Tensor, **extra: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(images, **extra).numpy()


@pytest.fixture(scope="module")
def cli_export(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m paddy.export`` of the run directory (default output dir), with the int8 model."""
    cwd = tmp_path_factory.mktemp("cwd")
    result = _cli(f"ckpt_path={run_dir}", "quantize=true", "batch_sizes=[1,3]", *FAST, cwd=cwd)
    assert not list(cwd.iterdir())  # Hydra leaves nothing behind (no outputs/ folder)
    return result, run_dir / "export"


def test_cli_export_matches_pytorch(cli_export: tuple[subprocess.CompletedProcess, Path], run_dir: Path) -> None:
    result, out = cli_export
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    printed = re.search(r"parity vs PyTorch .*: max abs diff ([0-9.e+-]+) .*<= atol 0.001: OK", result.stdout)
    assert printed, result.stdout
    for name in ("model.onnx", "model.int8.onnx", "labels.txt", "export.json"):
        assert (out / name).is_file(), name

    info = json.loads((out / "export.json").read_text())
    assert info["checkpoint"] == json.loads((run_dir / "metrics.json").read_text())["ckpt_path"]
    assert info["parity"]["ok"] and info["parity"]["atol"] == DEFAULT_ATOL == 1e-3
    assert info["parity"]["max_abs_diff"] <= 1e-3
    assert printed.group(1) == f"{info['parity']['max_abs_diff']:.3g}"  # the printed number is the checked one
    assert set(info["parity"]["max_abs_diff_per_batch"]) == {"1", "3"}
    assert info["onnx"]["inputs"] == [{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert info["onnx"]["outputs"] == [{"name": "logits", "shape": ["batch", 4], "dtype": "float32"}]
    assert {"torch", "onnx", "onnxruntime"} <= set(info["versions"])
    assert info["preprocessing"]["image_size"] == 32 and len(info["preprocessing"]["mean"]) == 3

    # The ONNX model, run by us in ONNX Runtime at two batch sizes, gives PyTorch's logits.
    model, class_names, _ = load_trained_model(run_dir)
    assert (out / "labels.txt").read_text().splitlines() == class_names == info["classes"]
    proto = onnx.load(str(out / "model.onnx"))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["class_names"]) == class_names and metadata["image_size"] == "32"
    session = _session(out / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["images"]
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        assert logits.shape == (batch, 4)
        assert np.abs(logits - _torch_logits(model, images)).max() <= 1e-3


def test_cli_quantized_model_runs(cli_export: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, out = cli_export
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    info = json.loads((out / "export.json").read_text())
    int8 = info["int8"]
    assert int8["integer_nodes"].get("ConvInteger", 0) > 0
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    assert 0 <= int8["top1_agreement"] <= 1 and int8["max_abs_diff_vs_torch"] >= 0
    session = _session(out / "model.int8.onnx")
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = session.run(["logits"], {"images": images})[0]
    assert logits.shape == (2, 4) and np.isfinite(logits).all()
    # The side-by-side latency table, with numbers for every backend.
    assert "| ONNX Runtime" in result.stdout and "int8 |" in result.stdout and "PyTorch" in result.stdout
    for backend in ("pytorch", "onnxruntime", "onnxruntime_int8"):
        assert info["latency_ms"][backend]["median_ms"] > 0
        assert info["throughput_img_s"][backend] > 0


def test_cli_bad_input_is_one_line_and_exit_2(run_dir: Path, tmp_path: Path) -> None:
    cases = {
        "no such file or directory": [f"ckpt_path={tmp_path / 'no-such-run'}"],
        "supported formats: onnx": [f"ckpt_path={run_dir}", "format=tflite", f"output_dir={tmp_path / 'x'}"],
    }
    running = {message: subprocess.Popen([sys.executable, "-m", "paddy.export", *args], cwd=tmp_path, env=_env(),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for message, args in cases.items()}
    for message, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        lines = (stdout + stderr).strip().splitlines()
        assert process.returncode == 2, stdout + stderr
        assert "Traceback" not in stdout + stderr
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_checkpoint_that_does_not_fit_is_a_checkpoint_error(run_dir: Path, tmp_path: Path) -> None:
    """The error ``main`` turns into one line and exit status 2, raised before anything is written."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["head"]["hidden"] = [16]
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="the weights do not fit .*missing keys: head.mlp.0.bias"):
        export(tmp_path / "edited.ckpt", output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_fusion_model_with_bot_linear_attention(tmp_path: Path) -> None:
    """Two named inputs (images and DCT features) with a shared dynamic batch axis, and BoT-linear attention."""
    model = paddy.create_model("mnv3s_dct", num_classes=3, attention="bot_linear",
                               **{"backbone.name": "test_resnet"}).eval()
    assert model.input_features == ("dct",) and model.dct_dim == 1024
    result = export_model(model, tmp_path, class_names=["a", "b", "c"], image_size=32, batch_sizes=[1, 3],
                          feature_options={"dct": {"block": 32, "size": 64}}, latency_runs=0, throughput_runs=0)
    assert result["parity"]["ok"] and result["parity"]["max_abs_diff"] <= 1e-3
    assert [i["name"] for i in result["onnx"]["inputs"]] == ["images", "dct"]
    assert result["preprocessing"]["features"]["dct"]["block"] == 32
    session = _session(tmp_path / "model.onnx")
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == {"images": ["batch", 3, 32, 32], "dct": ["batch", 1024]}
    generator = torch.Generator().manual_seed(2)
    for batch in (1, 3):
        images, dct = torch.randn(batch, 3, 32, 32, generator=generator), torch.rand(batch, 1024, generator=generator)
        logits = session.run(["logits"], {"images": images.numpy(), "dct": dct.numpy()})[0]
        assert logits.shape == (batch, 3)
        assert np.abs(logits - _torch_logits(model, images, dct=dct)).max() <= 1e-3


def test_torchscript_exporter_eca_and_parity_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = paddy.create_model("test_resnet", num_classes=2, attention="eca").eval()
    result = export_model(model, tmp_path / "ok", image_size=32, batch_sizes=[1, 2], exporter="torchscript",
                          latency_runs=2, warmup_runs=0, throughput_runs=0)
    assert result["parity"]["ok"] and result["onnx"]["exporter"] == "torchscript"
    session = _session(tmp_path / "ok" / "model.onnx")
    images = torch.randn(5, 3, 32, 32)
    assert np.abs(session.run(["logits"], {"images": images.numpy()})[0] - _torch_logits(model, images)).max() <= 1e-3

    # An ONNX model whose logits drift from PyTorch's is refused (the files stay for inspection).
    import paddy.export as export_module

    real_run = export_module._ort_run
    monkeypatch.setattr(export_module, "_ort_run", lambda session, inputs, what: real_run(session, inputs, what) + 0.01)
    with pytest.raises(ExportError, match=r"differ from PyTorch's by 0\.01.* > atol=0\.001"):
        export_model(model, tmp_path / "bad", image_size=32, batch_sizes=[1, 2], exporter="torchscript",
                     latency_runs=0, throughput_runs=0)
    assert json.loads((tmp_path / "bad" / "export.json").read_text())["parity"]["ok"] is False


def test_library_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"format='coreml' is not supported \(supported formats: onnx\)"):
        export(tmp_path, format="coreml")
    with pytest.raises(CheckpointError, match="no such file"):
        export(tmp_path / "missing")
    model = paddy.create_model("test_resnet", num_classes=2)
    with pytest.raises(ExportError, match="exporter='jit'"):
        export_model(model, tmp_path, exporter="jit")
    with pytest.raises(ExportError, match="2 outputs"):
        export_model(model, tmp_path, image_size=32, class_names=["a", "b", "c"])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), [("mnv3s_botlinear", {}), ("mnv3s_bot", {}), ("resnet18_eca", {}),
                                               ("resnet18_base", {"attention": "ca"}), ("mnv3s_dct", {})])
def test_export_presets(name: str, options: dict, tmp_path: Path) -> None:
    """The real zoo networks (timm MobileNetV3 / ResNet with attention) at 64 px, with int8."""
    model = paddy.create_model(name, num_classes=3, **options).eval()
    result = export_model(model, tmp_path, image_size=64, batch_sizes=[1, 4], quantize=True, latency_runs=2,
                          warmup_runs=0, throughput_runs=0, feature_options={"dct": {"block": 32, "size": 64}})
    assert result["parity"]["ok"] and result["parity"]["max_abs_diff"] <= 1e-3
    session = _session(tmp_path / "model.onnx")
    extra = {"dct": torch.rand(3, model.dct_dim)} if getattr(model, "input_features", ()) else {}
    images = torch.randn(3, 3, 64, 64)
    logits = session.run(["logits"], {"images": images.numpy(), **{k: v.numpy() for k, v in extra.items()}})[0]
    assert np.abs(logits - _torch_logits(model, images, **extra)).max() <= 1e-3
    assert _session(tmp_path / "model.int8.onnx").run(["logits"], {"images": images.numpy(), **{
        k: v.numpy() for k, v in extra.items()}})[0].shape == (3, 3)
